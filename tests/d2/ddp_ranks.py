"""Test helper, run as a script: ``train_net.run`` (what ``d2/train_net.py`` runs) with a main that trains each
(config, method) of the environment variable MGD_D2_RUNS ("config:method,..."; OUTPUT_DIR/<method>) and saves,
in every process, what must agree across ranks: the trainable parameters and the matching."""
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import toy  # noqa: E402,F401  (puts d2/ on the path)
import torch  # noqa: E402

import train_net  # noqa: E402
from detectron2.utils import comm  # noqa: E402


def rank_main(args):
    out = next(args.opts[i + 1] for i in range(0, len(args.opts), 2) if args.opts[i] == "OUTPUT_DIR")
    for run in os.environ["MGD_D2_RUNS"].split(","):
        config, method = run.split(":")
        run_args = copy.deepcopy(args)
        run_args.config_file = os.path.join(toy.CONFIGS, config)
        run_args.opts = args.opts + ["MGD.DISTILLER", method, "OUTPUT_DIR", os.path.join(out, method)]
        cfg = train_net.setup(run_args)
        trainer = train_net.Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
        state = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
        state.update({f"distiller.{k}": v for k, v in model.distiller.own_state_dict().items()  # none for dkd
                      if k.startswith("guided_inds") or k in ("num_updates", "calibrated_loss_factor")})
        state["world_size"] = torch.tensor(comm.get_world_size())
        state["ddp"] = torch.tensor(hasattr(trainer.model, "module"))
        torch.save(state, os.path.join(cfg.OUTPUT_DIR, f"rank{comm.get_rank()}.pth"))


if __name__ == "__main__":
    train_net.run(train_net.argument_parser().parse_args(), rank_main)
