#!/usr/bin/env python3
"""Golden loss and adapter gradients of one batch whose labels are partly -100 (what chat data's non-assistant
tokens are in `nibble finetune`): peft over the same NF4 base and init_adapter as make_qlora_golden.py, blocks 0
and 1 of train.txt, labels = the inputs except where ((t // 5) + b) % 3 != 0 (runs of 5, a third of them kept),
LlamaForCausalLM's loss (the mean over the labels that are not -100), one backward.

    python3 tests/golden/qlora/make_masked_loss_golden.py [--model DIR]
Writes masked_loss.json (loss, total grad norm, the rule) and masked_grads.safetensors (keys = saved adapter keys).
"""
import json
import os
import pathlib
import sys

import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoTokenizer

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_qlora_golden as mq  # noqa: E402  (load_base, saved_key, total_norm, SEQ_LEN)


def main():
    args = mq.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(args.model)
    model, _ = mq.load_base(args.model)
    model = PeftModel.from_pretrained(model, str(HERE / "init_adapter"), is_trainable=True)
    ids = torch.tensor(tok((HERE / "train.txt").read_text(encoding="utf-8"))["input_ids"], dtype=torch.int64)
    blocks = ids[:2 * mq.SEQ_LEN].view(2, mq.SEQ_LEN).contiguous()
    labels = blocks.clone()
    for b in range(2):
        for t in range(mq.SEQ_LEN):
            if ((t // 5) + b) % 3 != 0:
                labels[b, t] = -100
    model.train()
    loss = model(input_ids=blocks, labels=labels).loss
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    norm = mq.total_norm([p for _, p in params]).item()
    save_file({mq.saved_key(n): p.grad.detach().contiguous() for n, p in params},
              str(HERE / "masked_grads.safetensors"), metadata={"format": "pt"})
    out = {"loss": loss.item(), "grad_norm": norm, "blocks": [0, 1], "seq_len": mq.SEQ_LEN,
           "targets": "labels[b][t] kept where ((t // 5) + b) % 3 == 0, else -100",
           "n_targets": int((labels[:, 1:] != -100).sum().item())}
    (HERE / "masked_loss.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)
    main()
