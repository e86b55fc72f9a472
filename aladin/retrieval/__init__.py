"""Retrieval: encoding stores, scoring them with the teacher, faiss indexes and the two-stage retriever."""
