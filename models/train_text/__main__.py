"""python -m graphcore_models.train_text: the train-text-from-scratch program."""
import sys

from .cli import main

sys.exit(main())
