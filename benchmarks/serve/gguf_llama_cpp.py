"""Does llama.cpp run our GGUF export as our model? Tokenization of real text, logits, greedy text.

Needs llama-cpp-python (`pip install llama-cpp-python`: it compiles llama.cpp, ~20 minutes on 2 cores).

    llm-recipes export runs/quickstart/dpo/final --to gguf --output_dir runs/quickstart/gguf
    python benchmarks/serve/gguf_llama_cpp.py runs/quickstart/dpo/final runs/quickstart/gguf/dpo.gguf \\
        --text runs/quickstart/clean/validation

Prints one JSON line: documents whose llama.cpp token ids equal ours, the largest logit difference over
a few windows, whether greedy continuations agree, and llama.cpp's decoding speed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="the RecipeGPT folder the GGUF file was exported from")
    parser.add_argument("gguf", help="the exported .gguf file")
    parser.add_argument("--text", required=True, help="a folder of parquet files with a 'text' column, or a .txt file")
    parser.add_argument("--documents", type=int, default=300)
    parser.add_argument("--windows", type=int, default=8, help="sequences whose logits are compared")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import llama_cpp
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llm_recipes  # noqa: F401

    text_path = Path(args.text)
    if text_path.is_dir():
        texts = [t for f in sorted(text_path.glob("*.parquet")) for t in pq.read_table(f, columns=["text"])["text"]
                 .to_pylist()]
    else:
        texts = text_path.read_text(encoding="utf-8").split("\n\n")
    texts = [t for t in texts if t.strip()][: args.documents]
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir).eval()
    context = model.config.max_position_embeddings
    llm = llama_cpp.Llama(model_path=args.gguf, n_ctx=context, logits_all=True, verbose=False,
                          n_threads=args.threads, seed=0)

    same, tokens, first_difference = 0, 0, None
    for text in texts:
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        tokens += len(ours)
        if ours == theirs:
            same += 1
        elif first_difference is None:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            first_difference = {"text": text[:200], "at_token": at,
                                "ours": tokenizer.convert_ids_to_tokens(ours[at:at + 5]),
                                "llama_cpp": tokenizer.convert_ids_to_tokens(theirs[at:at + 5])}

    worst, agree, speed = 0.0, 0, []
    for text in texts[: args.windows]:
        ids = tokenizer(text)["input_ids"][: context // 2]
        llm.reset()
        llm.eval(ids)
        theirs = np.asarray(llm.scores[: len(ids)])
        with torch.inference_mode():
            expected = model(torch.tensor([ids])).logits[0].numpy()
            ours_greedy = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                                         pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()
        worst = max(worst, float(np.abs(theirs - expected).max()))
        llm.reset()
        started = time.perf_counter()
        generated = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            generated.append(token)
            if len(generated) == 16:
                break
        speed.append(16 / (time.perf_counter() - started))
        agree += generated == ours_greedy
    print(json.dumps({"gguf": args.gguf, "llama_cpp_python": llama_cpp.__version__, "documents": len(texts),
                      "tokens": tokens, "same_ids": same, "first_difference": first_difference,
                      "windows": args.windows, "max_abs_logit_diff": round(worst, 6), "greedy_16_agree": agree,
                      "llama_cpp_decode_tokens_per_s": round(float(np.median(speed)), 1)}))


if __name__ == "__main__":
    main()
