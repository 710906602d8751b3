"""The sample suite: expectations per kernel, the steps run in a guest, their transcripts, the
verdict, the run over kernels. Gives RunResults."""
