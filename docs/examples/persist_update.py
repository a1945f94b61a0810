"""Persisting and updating an index: save, load (verified), add, delete, save again, and
open the same folder from LangChain and LlamaIndex.

Run it with ``python docs/examples/persist_update.py``; it works in a temporary folder.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from langchain_s3 import S3Retriever as LangChainS3Retriever
from llama_index.retrievers.s3 import S3Retriever as LlamaIndexS3Retriever

from s3_retriever import IndexFormatError, OutputExistsError, S3Index

NOTES = {
    "monday": "Monday's meeting moved the product launch to the ninth of June.",
    "tuesday": "On Tuesday the design team chose a green logo for the launch.",
    "draft": "Draft note: the launch might happen in May. This note is out of date.",
}


def main(workdir: Path) -> None:
    folder = workdir / "notes.s3"

    # 1. Build and save. save() writes a new generation folder, then switches the CURRENT
    #    pointer to it in one rename: a crash never leaves a half-written index behind.
    index = S3Index.from_model()
    index.add_texts(list(NOTES.values()), metadatas=[{"day": d} for d in NOTES],
                    ids=list(NOTES), show_progress=False)
    index.save(folder)
    print("saved:", sorted(p.name for p in folder.iterdir()))
    generation = folder / "gen-000001"
    print("generation:", sorted(p.name for p in generation.iterdir()))

    # 2. Load it later, in another process: files, model and SAEs are checked against the
    #    manifest's hashes. Pass model= to reuse a model that is already loaded.
    index = S3Index.load(folder)
    print("loaded:", index)

    # 3. Update: new documents are scanned into a new segment (nothing is re-scanned);
    #    deleted documents are dropped from every later search. Save again to persist.
    index.add_texts(["Wednesday: the launch venue is the old harbour warehouse."],
                    metadatas=[{"day": "wednesday"}], ids=["wednesday"], show_progress=False)
    index.delete(["draft"])
    try:
        index.save(folder)  # an index is there already: replacing it must be explicit
    except OutputExistsError as e:
        print("refused:", str(e).split(": ", 1)[1][:40])
    index.save(folder, overwrite=True)
    top = index.search("Where is the launch?", k=1)[0]
    print(f"after the update: {len(index)} documents; top span from {top.doc_id!r}")

    # 4. A damaged or edited index is refused with a clear error, never read wrongly.
    edited = folder / "gen-000002" / "docs.jsonl"
    edited.write_text("{}\n", encoding="utf-8")
    try:
        S3Index.load(folder, model=index.lm)
    except IndexFormatError as e:
        print("refused:", str(e).split("/")[-1][:60])
    index.save(folder, overwrite=True)  # repair it from the index in memory

    # 5. The frameworks open the same folder (sharing the loaded model).
    lc = LangChainS3Retriever.load(folder, model=index.lm, k=1)
    print("LangChain:", lc.invoke("When is the launch?")[0].metadata["doc_id"])
    li = LlamaIndexS3Retriever.from_persist_dir(folder, model=index.lm, similarity_top_k=1)
    print("LlamaIndex:", li.retrieve("What colour is the logo?")[0].node.node_id)
    # LlamaIndex's own persist() writes the index plus the retriever's settings:
    li.persist(workdir / "storage")
    print("persisted:", sorted(p.name for p in (workdir / "storage").iterdir()))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
