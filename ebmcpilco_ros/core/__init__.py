"""ROS-free algorithm core: plant, GP model, policy, costs, optimisers and the trial loop."""
from .torch_support import check_installed_torch

check_installed_torch()  # an unsupported torch stops here, saying what to install
