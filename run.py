"""Fine-tune one model on one task with one initialisation method, evaluate it, write one result file.

    python run.py method=astra task=gsm8k                  # one run (defaults: conf/config.yaml)
    python run.py -m method=lora,pissa,astra seed=1,2,3    # a Hydra multirun grid
    python run.py resume=logs/runs/<run_dir>               # continue an interrupted run from its checkpoint

The run itself lives in :mod:`astra.run.runner`; this file composes the config and turns the outcome into an exit
code (0 ok, 1 failed, 130 / 143 interrupted by SIGINT / SIGTERM).
"""

import sys

from astra.run import console

console.quiet_third_party(sys.argv)  # before the noisy imports; hydra.verbose=true or ASTRA_VERBOSE=1 keeps all

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from astra.run import entry  # noqa: E402  (registers the ${astra_...} resolvers before composing)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return entry.run_job(cfg)


if __name__ == "__main__":
    sys.argv = entry.prepare_argv(sys.argv)
    sys.exit(entry.finish(main))
