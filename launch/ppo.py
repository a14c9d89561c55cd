"""PPO entry point: ``deepspeed --num_gpus N launch/ppo.py --config CFG [--set k=v ...]``.

Also runs as a single process: ``python launch/ppo.py --config CFG``.
"""

import sys

from patentgpt.train.cli import main

if __name__ == "__main__":
    sys.exit(main("ppo"))
