"""Network functions that live in topology nodes: NAT64, NAT44, middleboxes, converters, proxies, ..."""
