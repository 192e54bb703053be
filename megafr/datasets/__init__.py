"""Data sets: the synthetic SynthHeads world and the alignment of real photos."""
