import os

from graphcore.testing import load_profile

# the kit's hypothesis profiles (graphcore.testing.profiles): ci (the default here: reproducible,
# no deadline, since first calls JIT-compile kernels), dev (random), fuzz (many more examples)
load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
