"""slotrun's benchmarks (speed, memory, quality): `python -m bench [grouper|step|loader|quality|all]`.

Run by hand or by `make bench`, never as timed tests. Every speed figure is a ratio against a baseline measured
in the same process with runs alternated (the machine is shared), reported as a median with its spread; the
absolute figures (images/s, FLOP/s) are recorded beside the ratios for context only.
"""
