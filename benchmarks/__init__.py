"""Speed and cost measurements of the library (never timed tests): bench's throughput, start-up, snapshots, analyze."""
