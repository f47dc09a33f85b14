"""Fault injection (`make chaos`; a bounded form runs in `make test`): questions flow while processes are
killed, paused and stopped and poison is produced, then nothing may be lost, stuck, overwritten or
crash-looping."""
