"""QEMU-backed hosts: guests running another kernel (Debian 5.10 / 6.1 / 6.12), wired by TAPs.

images.py builds and caches one boot image per kernel (``build(name) -> Image``, ``list_images()``);
guest.py boots one (KVM when it works, TCG otherwise) and drives it over a virtio-serial control
channel served by guestd.py inside the guest (``Guest``)."""
