"""The Arrow types the table declarations share (`tracelab.core.tables`), in a module without
pandera: the workflow's start-up reads them through the perturbation registry."""

import pyarrow as pa

DICT_STRING = pa.dictionary(pa.int32(), pa.string())
TIMESTAMP = pa.timestamp("ns", tz="UTC")
