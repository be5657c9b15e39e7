"""Seeded generators of test traces (`python -m tracelab.synth`): not used by the pipeline.

Install with the `synth` extra (`pip install -e '.[synth]'`); capture generation needs dpkt.
"""
