"""Quickstart: index a short text, print the evidence spans for a question, answer it.

Run it with ``python docs/examples/quickstart.py``: the embedded SmolLM2-135M-Instruct model
and its shipped SAEs, on the CPU, offline. Its output is ``docs/examples/quickstart.out``.
"""

# --8<-- [start:import]
from s3_retriever import S3Index

# --8<-- [end:import]

TEXT = """The Varnholm lighthouse was built in 1887 by the engineer Elise Marsk. Its lamp burned \
whale oil until 1921, when the lighthouse was converted to electricity.

Tomas Berg kept the lighthouse from 1950 to 1983. His daily weather log is now held by the \
town museum, which opens from May to September.

In 1999 the light was automated. The keeper's cottage became a small cafe that serves \
cardamom buns to summer visitors."""

# --8<-- [start:five-lines]
index = S3Index.from_model()  # the embedded SmolLM2-135M and its SAEs
index.add_texts([TEXT], ids=["varnholm"], show_progress=False)
for span in index.search("Who built the lighthouse?", k=1):  # the best evidence span
    print(f"{span.doc_id}[{span.start_char}:{span.end_char}] {span.text!r}")
print("answer:", index.answer("Who built the lighthouse?").text)  # KV-free: spans only
# --8<-- [end:five-lines]
