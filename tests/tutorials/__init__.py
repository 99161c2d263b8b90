"""Models written the way other authors write them (their ids, framing, code), used to test that edgeseq
takes a user's own model as it is. Each module keeps its author's style; nothing here imports edgeseq."""
