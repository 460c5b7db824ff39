"""Link shaping: netem where the kernel has it, a userspace fallback where it does not."""
