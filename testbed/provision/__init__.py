"""Provisioning and remote machines: ansible-runner driver, paramiko remote control, inventories."""
