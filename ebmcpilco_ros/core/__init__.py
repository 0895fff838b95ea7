"""ROS-free algorithm core: plant, GP model, policy, costs, optimisers and the trial loop."""
