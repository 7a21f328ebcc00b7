export { Bm25Retriever, type IndexedChunk, type RetrievedHit, type Retriever } from "./retriever.js";
export { technicalTerms } from "./technical-tokenizer.js";
