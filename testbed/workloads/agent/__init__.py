"""Standalone workload agent for the MPTCP testbed (stdlib only; run as ``python -S path/to/agent MODE ...``).

It is started inside network namespaces, so it never imports the ``testbed`` package and keeps its
imports small. Every mode prints exactly one JSON object (one line) on stdout when it ends; servers
first print the line ``ready`` (flushed) once listening, before anything else. Diagnostics never go to
stdout. Exit status: 1 when ``errors`` is not empty (bulk: any failure or digest mismatch; rr-client:
any failed request; rr-server: any connection-level failure), else 0; 2 for command-line errors
(argparse; no JSON then). The rr-server's normal end is SIGTERM/SIGINT or its --timeout (``stopped_by``),
which is not an error. SIGTERM/SIGINT make the clients and the bulk server stop, record ``terminated by
SIGTERM`` in ``errors`` and still print their JSON.

Modes
-----
bulk-server --bind ADDR --port P [--protocol mptcp|tcp] [--direction upload|download] [--size BYTES]
            [--seed S] [--timeout SECONDS] [--abort-after BYTES [--abort-side S] [--abort-how H]]
bulk-client --connect ADDR --port P --size BYTES [--protocol ...] [--direction ...] [--seed S]
            [--timeout SECONDS] [--connect-retries N] [--via KIND:ADDR:PORT] [--abort-... as the server]
rr-server   --bind ADDR --port P [--protocol ...] [--response-size BYTES] [--timeout SECONDS]
            [--max-threads N]
rr-client   --connect ADDR --port P --requests N --request-size BYTES --response-size BYTES
            [--protocol ...] [--interval SECONDS] [--new-connection-per-request] [--timeout SECONDS]
            [--connect-retries N] [--via KIND:ADDR:PORT]

BYTES accepts an integer or a number with a suffix: k/M/G/T (powers of 1000) or Ki/Mi/Gi/Ti (powers
of 1024), optionally followed by ``B``. ``--timeout`` bounds the whole run (0 = unlimited; default
300 s). ``--connect-retries`` (default 200) retries connect() every 10 ms on ECONNREFUSED.

``--via converter:ADDR:PORT`` reaches --connect through a Transport Converter (RFC 8803): the
Convert message with a Connect TLV goes in the SYN (TCP Fast Open: non-blocking sendto with
MSG_FASTOPEN; without a TFO cookie the SYN asks for one and the message follows the handshake),
and the connection is used once the converter's answer arrived (an Error TLV fails it). With
rr-client --new-connection-per-request the request rides along in the SYN. ``--via
socks5:ADDR:PORT`` does the SOCKS5 exchange (RFC 1928: no authentication, CONNECT) instead.

Bulk wire protocol
------------------
The payload is a deterministic pseudo-random stream: a 1 MiB block ``random.Random(seed).randbytes``,
emitted over and over, pass ``i`` rotated left by ``(i * 65537) % 1 MiB`` bytes, cut at SIZE bytes.
upload:   client sends SIZE bytes, shuts down writing; the server hashes (sha256) until EOF, replies
          with its hex digest and a newline, and closes.
download: server sends SIZE bytes and shuts down writing; the client hashes until EOF, sends its hex
          digest and a newline, and closes. The server compares it with the digest of what it sent.
          The client's ``sha256_remote`` is the digest of the stream the server sends for (seed, size),
          which is also the server's ``sha256``: client and server must be given the same --seed and
          --size.
The bulk server accepts one connection but keeps listening until the transfer ends (MPTCP MP_JOIN
subflows arrive through the listener).

Aborting (bulk, --abort-after BYTES)
------------------------------------
Both sides get the same --abort-* options. The aborting side (--abort-side, default client) moves
BYTES of payload (received, or handed to the kernel when it sends) and closes its socket abruptly;
the other side (the peer) must see the connection reset (ECONNRESET or EPIPE), which is the success
of the transfer: no digest line is exchanged. --abort-how: ``unread`` (receiving side only) stops
reading and closes once more payload waits unread in the receive queue (up to 5 s: FIONREAD, or
MSG_PEEK where MPTCP sockets lack it); ``linger0`` sets SO_LINGER {1, 0} first; ``both``; ``auto``
(default) is unread for the receiving side and linger0 for the sending side. Linux TCP answers
either with a RST; upstream Linux MPTCP sends MP_FASTCLOSE on close() with unread data since 6.1
("mptcp: use fastclose on more edge scenarios") and with SO_LINGER {1, 0} only since 7.1 ("mptcp:
fastclose msk when linger time is 0", backported to stable kernels); before that its close() is an
orderly DATA_FIN and the peer sees EOF, which is an error here. The receiving side checks that what
arrived is the start of the sender's stream (sha256 of the first ``bytes`` bytes, computed locally).

Request/response wire protocol
------------------------------
Request:  4-byte big-endian length L, then L bytes (the client sends L = --request-size).
Response: 4-byte big-endian length M, then M bytes (the server sends M = its --response-size; the
          client counts a different M as a failed request). The server answers only after it has read
          the whole request, and handles any number of requests per connection until EOF.

JSON keys
---------
common:      mode, protocol_requested, mptcp_socket (an MPTCP socket was opened), mptcp_socket_error
             (why socket(..., IPPROTO_MPTCP) failed and plain TCP was used, else null), is_mptcp,
             is_mptcp_method ("TCP_IS_MPTCP", "MPTCP_INFO", "plain-tcp-socket" or null), mptcp_info
             (struct mptcp_info as a dict with the ``mptcpi_`` prefix dropped, ``reserved`` left out,
             ``fallback`` / ``remote_key_received`` decoded from ``flags``, only the fields the
             kernel returned; null when unavailable), errors (list of distinct strings, at most 50).
             Addresses (peer, local) are {"host": str, "port": int}; durations are seconds.
bulk-server: direction, size, seed, bytes, sha256, seconds, peer, local; download adds sha256_peer and
             intact. ``seconds``: accept() to EOF (upload), accept() to the client's digest (download).
bulk-client: direction, size, seed, bytes, seconds, goodput_bps, sha256_local, sha256_remote, intact,
             connect_seconds, connect_attempts, first_byte_seconds, peer, local. ``seconds`` runs from
             connect() returning to the server's digest (upload) or to EOF (download);
             goodput_bps = bytes * 8 / seconds; first_byte_seconds (download only) runs from connect()
             returning to the first payload byte; connect_seconds is the successful connect() call.
             mptcp_info / is_mptcp are sampled just before close, while the subflows are still up.
             Also via, setup_seconds, established_seconds, syn_data, via_error (see "through a proxy").
rr-server:   response_size, requests (served), connections, mptcp_connections, bytes_received,
             bytes_sent (framing included), seconds, stopped_by ("signal" | "timeout" | null).
             is_mptcp aggregates the connections like the rr-client's (is_mptcp_method
             "per-connection"); mptcp_info is that of the last connection sampled. Each connection
             is served by its own thread, at most --max-threads (default 32) at once; further ones
             wait in the listen backlog.
aborted bulk (both sides): abort ({side, after, how}; how resolved); the aborting side adds aborted
             (it closed abruptly), abort_bytes (payload moved by then), unread_at_close / unread_bytes
             (how unread/both: payload waiting unread at close(); the count is null without FIONREAD),
             linger_zero; the peer adds peer_reset (the connection ended with ECONNRESET/EPIPE),
             reset_error, reset_bytes (payload moved when it did). The receiving side's intact
             compares the digest of what it received (bulk-client sha256_local, bulk-server sha256)
             with that of the stream's first ``bytes`` bytes (sha256_remote, sha256_expected); the
             sending client has intact null and sha256_local of what it sent. ``seconds`` ends at the
             abort or the reset.
through a proxy (bulk-client, rr-client): via ({kind, host, port} or null); setup_seconds: from the
             start of the attempt until the proxy confirmed the server (SOCKS reply 0 / Convert answer
             without Error TLV), = connect_seconds without --via; established_seconds: when the attempt
             counts as connected for a Happy-Eyeballs race (RFC 8305): through SOCKS the TCP
             connection to the proxy, through a converter its answer (as libconvert's connect());
             connect_seconds: the TCP connection to the proxy; syn_data (bulk) / syn_data_connections
             (rr): the SYN carried data (TCP_INFO); via_error: {kind, code, name, seconds,
             connect_seconds, established_seconds} of the last error the proxy reported (names as in
             RFC 8803 section 4.2.7 and RFC 1928 section 6, e.g. destination-unreachable,
             host-unreachable), via_errors (rr: how many).
rr-client:   requests, request_size, response_size, interval, new_connection_per_request, count
             (= requests; ok + failed), ok, failed, ttfb_seconds, completion_seconds, connect_seconds
             setup_seconds, established_seconds, first_byte_seconds (from the start of a connection
             attempt to the first response byte of its first request: handshake, proxy and request)
             (summaries {p50, p95, p99, mean, max, min}, null values when empty), connect_attempts
             (over all connections, retries included), samples (TTFB of each successful request,
             in order, rounded to microseconds), connections,
             mptcp_connections, seconds. TTFB / completion run from the start of the request write
             to the first / last response byte; with --new-connection-per-request they start before
             connect(), so they include the handshake. --interval paces request starts on a fixed
             schedule (start i at t0 + i * interval). Percentiles use the nearest-rank method: the
             p-th percentile of n sorted values is the value at 1-based rank ceil(p * n / 100).
             is_mptcp is true when every connection used MPTCP, false when any did not, null when
             unknown; mptcp_info is that of the last connection.

is_mptcp: false for a plain TCP socket. On an MPTCP socket, getsockopt(SOL_TCP, TCP_IS_MPTCP) (5.16+)
decides; without it, getsockopt(SOL_MPTCP, MPTCP_INFO) does: data -> not (flags & FALLBACK), zero
length or an error -> fallen back (when MPTCP_INFO worked on the fresh socket) or null (unknown).

Layout
------
One module per concern, run through ``__main__.py`` (``python -S DIR`` runs a directory): ``cli``
(the parser, main), ``common`` (errors, signals, argument types, payload stream, output), ``sockets``
(MPTCP sockets, connect/listen, exact reads), ``relay`` (converter and SOCKS5 clients), ``abort``,
``bulk``, ``rr``. main() imports only its mode's module. Their bytecode is compiled on the host
(testbed.workloads.agent_path()): a guest sees the checkout read-only and could not cache it.
"""
