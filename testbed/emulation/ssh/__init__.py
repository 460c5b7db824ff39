"""The ssh node backend: topology hosts on remote machines (see node.py)."""
