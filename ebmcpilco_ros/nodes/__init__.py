"""ROS 2 nodes: thin shells (parameters -> config dataclasses -> core calls, messages <-> arrays).

    sim_plant            simulated cart-pole (stand-in for the rig)
    policy_execution     real-time control loop, trial recording
    model_learning       dataset and GP model fit
    policy_optimization  MC-PILCO / GP-iLQR optimisation
    trial_manager        the learning loop, services, status, run directory
    hardware_interface   the physical rig (serial link) in place of sim_plant; lifecycle node
docs/NODES.md lists every topic, service, parameter and payload.
"""

NODE_NAMES = ("sim_plant", "policy_execution", "model_learning", "policy_optimization",
              "trial_manager")
# The graph on a rig: the hardware interface in place of the simulated plant.
RIG_NODE_NAMES = ("hardware_interface",) + NODE_NAMES[1:]
