"""python -m graphcore_models.baby_llama: the baby-llama program."""
import sys

from .cli import main

sys.exit(main())
