"""What each of speed.py's workloads is (shared by the runs and the report)."""

SOURCE_LEN, NEW_TOKENS = 24, 64
WORKLOADS = {  # name: (model, batch, beam)
    "marian-greedy": ("marian", 1, 1),
    "marian-beam": ("marian", 16, 4),
    "lstm-greedy": ("lstm", 1, 1),
}
FILE_WORKLOADS = {"file-greedy": 1, "file-beam": 4}  # name: beam
FILE_LINES, FILE_TOKENS = 10_000, 32
