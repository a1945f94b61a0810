"""LangChain quickstart: an S3 retriever and a local chat model in an offline RAG chain.

Run it with ``python docs/examples/langchain_quickstart.py`` (the embedded SmolLM2-135M
model and its shipped SAEs; no network, no API key).
"""

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_s3 import ChatS3, S3Retriever, format_documents

TEXTS = [
    "Marie Curie was born in Warsaw in 1867. She moved to Paris to study physics.",
    "The Amazon river flows through Brazil. Its basin is home to a vast rainforest.",
    "The secret code word is Zanzibar. It opens the old library door.",
]


def main() -> None:
    # Index three short texts (the model reads each once) and retrieve evidence spans.
    retriever = S3Retriever.from_texts(
        TEXTS, metadatas=[{"topic": "science"}, {"topic": "nature"}, {"topic": "note"}],
        ids=["curie", "amazon", "secret"], k=2, include_scores=True, show_progress=False)
    for doc in retriever.invoke("Where was Marie Curie born?", k=2):
        print(f"{doc.metadata['score']:.3f}  {doc.id:<14} {doc.page_content}")

    # A tiny LCEL RAG chain: retriever | format | prompt | llm, on the same local model.
    # A 135M model answers best from a single focused span, so the chain takes the top one.
    retriever.k = 1
    llm = ChatS3.from_index(retriever, max_new_tokens=16)
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer the question using only the context. Reply with a short answer."),
        ("human", "Context:\n{context}\n\nQuestion: {question}"),
    ])
    chain = ({"context": retriever | format_documents, "question": RunnablePassthrough()}
             | prompt | llm | StrOutputParser())
    question = "What is the secret code word?"
    print(f"Q: {question}\nA: {chain.invoke(question)}")


if __name__ == "__main__":
    main()
