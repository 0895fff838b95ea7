"""Settings of the ROS node graph: the simulated plant, the execution loop, names and timeouts.

Three sections of the same YAML file the learning core reads (the core lists them among
FOREIGN_SECTIONS and skips them; they are validated here with the core's `setting` metadata, so
the nodes turn the same ranges into ROS parameter descriptors):

    sim_plant   the simulated cart-pole node: physics and sensor rates, latency, quantisation,
                command watchdog
    execution   the policy execution node: freshness of state, plant reset, scheduling
    nodes       shared by every node: topic, service and joint names, queue depths, timeouts
                between nodes, the trial manager's run directory

The hardware interface node also reads the `hardware` section, defined and validated with the rig
layer (hardware/config.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..core.config import (ConfigError, PlantConfig, Section, read_parameters,
                           section_from_mapping, setting)
from ..hardware.config import HardwareConfig

# Next to ROS's own logs, whatever directory the graph is launched from (nodes/rundir.run_root).
DEFAULT_RUN_DIRECTORY = "$ROS_HOME/ebmcpilco/runs"


@dataclass(frozen=True)
class SimPlantConfig(Section):
    """The simulated plant: a stand-in for the rig, so it knows nothing of trials or policies."""

    _section = "sim_plant"
    physics_rate: float = setting(1000.0, 1.0, 100000.0,
                                  doc="integration rate [Hz]: one RK4 step per 1/physics_rate; "
                                      "a command applies from the first step after it arrives")
    publish_rate: float = setting(500.0, 1.0, 100000.0,
                                  doc="sensor rate [Hz] of the joint-state topic (<= physics_rate)")
    sensor_latency: float = setting(0.0, 0.0, 1.0,
                                    doc="delay from sampling a state to publishing it [s]; the "
                                        "message stamp stays the sampling time")
    cart_encoder_resolution: float = setting(0.0, 0.0, None,
                                             doc="quantisation step of the cart position [m]; "
                                                 "0 = none")
    pole_encoder_resolution: float = setting(0.0, 0.0, None,
                                             doc="quantisation step of the pole angle [rad]; "
                                                 "0 = none")
    command_watchdog_timeout: float = setting(0.1, 0.001, 10.0,
                                              doc="no command for this long -> the applied force "
                                                  "is zero [s]; must exceed plant.control_period")
    publish_true_state: bool = setting(True,
                                       doc="also publish the noise-free state on the debug topic "
                                           "nodes.true_state_topic (evaluation only)")
    max_catch_up: float = setting(0.5, 0.0, 60.0, lo_open=True,
                                  doc="if the process falls further behind real time than this "
                                      "[s] (e.g. suspended), the plant skips ahead instead of "
                                      "integrating the gap")
    realtime_priority: int = setting(0, 0, 99,
                                     doc="SCHED_FIFO priority of the physics thread; 0 = normal "
                                         "scheduling (needs CAP_SYS_NICE or an rtprio limit)")
    seed: int = setting(0, 0, 2**31 - 1, doc="seed of the sensor noise and the reset draws")

    def check(self) -> None:
        if self.publish_rate > self.physics_rate:
            self.fail("publish_rate", f"must be <= sim_plant.physics_rate = {self.physics_rate}")


@dataclass(frozen=True)
class ExecutionConfig(Section):
    """The policy execution node's control loop (its period is plant.control_period)."""

    _section = "execution"
    state_timeout: float = setting(0.05, 0.0, 10.0, lo_open=True,
                                   doc="inside a trial, a control step whose newest state is "
                                       "older than this [s] ends the trial as failed")
    request_state_timeout: float = setting(1.0, 0.0, 60.0, lo_open=True,
                                           doc="a trial request is refused when no state came "
                                               "for this long [s] (the plant is not publishing); "
                                               "after the reset a new state must come within "
                                               "reset_timeout")
    reset_before_trial: bool = setting(True,
                                       doc="call the plant's reset service before each trial")
    reset_timeout: float = setting(10.0, 0.0, 600.0, lo_open=True,
                                   doc="the reset must answer, and a state sampled after it "
                                       "arrive, within this [s]; above hardware.home_timeout "
                                       "(a rig's reset homes the cart and the pole)")
    switch_interval: float = setting(0.0002, 0.00001, 0.1,
                                     doc="Python's thread switch interval in this process [s]: "
                                         "how long the control thread may wait for the "
                                         "interpreter lock held by message callbacks")
    realtime_priority: int = setting(0, 0, 99,
                                     doc="SCHED_FIFO priority of the control thread; 0 = normal "
                                         "scheduling (needs CAP_SYS_NICE or an rtprio limit)")
    record_timing: bool = setting(True,
                                  doc="keep per-step lateness, compute time and state age in "
                                      "the trial record's meta.timing")


@dataclass(frozen=True)
class NodesConfig(Section):
    """Names and timeouts every node of the graph shares.

    Names without a leading slash resolve inside the node's namespace (a launch argument), so
    with no namespace `cartpole/joint_states` is `/cartpole/joint_states`.
    """

    _section = "nodes"
    joint_names: tuple[str, ...] = setting(("slider_to_cart", "cart_to_pendulum"),
                                           doc="JointState names: the cart's prismatic joint, "
                                               "then the pole's revolute joint")
    state_topic: str = setting("cartpole/joint_states", doc="measured state (JointState)")
    true_state_topic: str = setting("cartpole/true_joint_states",
                                    doc="noise-free state from the simulated plant only "
                                        "(evaluation; a rig has no such topic)")
    command_topic: str = setting("cartpole/effort_command",
                                 doc="force command (Float64MultiArray, one element, N)")
    reset_service: str = setting("cartpole/reset", doc="plant reset (std_srvs/Trigger)")
    estop_service: str = setting("cartpole/estop",
                                 doc="rig emergency stop (std_srvs/Trigger): zero, disable, "
                                     "latched until the reset service")
    record_depth: int = setting(50, 1, 10000,
                                doc="queue depth of reliable request, event and record topics")
    status_depth: int = setting(10, 1, 1000,
                                doc="history of the latched status topic (late joiners get it)")
    diagnostics_period: float = setting(1.0, 0.01, 3600.0, doc="/diagnostics period [s]")
    status_period: float = setting(0.5, 0.01, 3600.0,
                                   doc="how often the trial manager re-checks readiness [s]")
    progress_period: float = setting(1.0, 0.01, 3600.0,
                                     doc="optimisation progress events at most this often [s]")
    request_timeout: float = setting(10.0, 0.1, 3600.0,
                                     doc="a node must accept or refuse a request within this [s]")
    answer_timeout: float = setting(2.0, 0.01, 3600.0,
                                    doc="a request unanswered this long is sent again (within "
                                        "request_timeout) [s]")
    trial_timeout_margin: float = setting(10.0, 0.0, 3600.0,
                                          doc="a trial record may arrive this long after the "
                                              "trial's nominal end [s]")
    fit_timeout: float = setting(900.0, 1.0, 86400.0, doc="longest model fit [s]")
    optimization_timeout: float = setting(7200.0, 1.0, 604800.0,
                                          doc="longest optimisation phase [s]")
    model_wait_timeout: float = setting(60.0, 0.1, 3600.0,
                                        doc="the optimiser waits this long for the model version "
                                            "a request names [s]")
    peer_grace: float = setting(3.0, 0.0, 600.0,
                                doc="a node missing from the graph for this long is gone [s]")
    resend_attempts: int = setting(3, 0, 100,
                                   doc="times the trial manager resends trials the model node "
                                       "reports missing")
    run_directory: str = setting(DEFAULT_RUN_DIRECTORY,
                                 doc="the trial manager's run directory root: a leading "
                                     "$ROS_HOME is $ROS_HOME (else ~/.ros), a relative path "
                                     "is from the working directory; '' = write none")
    resume_run: str = setting("", doc="the run /ebmcpilco/resume continues: a run directory's "
                                      "path, or a run id under run_directory; '' = the latest "
                                      "run there that did not finish")
    record_bags: bool = setting(True, doc="also write each trial as a ROS 2 bag (MCAP) beside "
                                          "its record in the run directory")
    model_max_runs: int = setting(2, 1, 1000,
                                  doc="model_learning keeps the trial records of at most this "
                                      "many runs (the least recently used is forgotten; a run's "
                                      "records go when the trial manager reports it over)")


NODE_SECTIONS: dict[str, type] = {
    "sim_plant": SimPlantConfig,
    "execution": ExecutionConfig,
    "nodes": NodesConfig,
    "hardware": HardwareConfig,
}


def build_node_section(name: str, values: Mapping[str, Any] | None) -> Any:
    """One node section from its mapping (YAML ints accepted for floats, lists for tuples)."""
    return section_from_mapping(NODE_SECTIONS[name], values)


def load_node_sections(path: str | Path) -> dict[str, Any]:
    """The node sections of a YAML config file (ROS parameter-file layout or plain mapping)."""
    data = read_parameters(path)
    return {name: build_node_section(name, data.get(name)) for name in NODE_SECTIONS}


def check_sim_plant(plant: PlantConfig, sim: SimPlantConfig) -> None:
    """Cross-section rule: the watchdog must not cut in between two regular commands."""
    _check_watchdog("sim_plant", sim.command_watchdog_timeout, plant)


def check_hardware(plant: PlantConfig, hardware: HardwareConfig) -> None:
    """The same rule for the rig's host-side command watchdog, and a braking zone deep enough
    to stop the cart from the velocity limit: margin >= v_max^2 (m1 + m2) / (2 F_brake).

    (m1 + m2) bounds the cart's effective mass m1 + m2 (1 - 3/4 cos^2 theta); a fast-swinging
    pole can still pull the cart further, so the margin is a floor, not a guarantee (a learning
    run's exploration on a 0.2 m margin at 3 m/s hit the end stops three times in three trials).
    """
    _check_watchdog("hardware", hardware.command_watchdog_timeout, plant)
    if hardware.soft_limit_brake_force > 0:
        mass = plant.cart_mass + plant.pole_mass
        stopping = hardware.cart_velocity_limit ** 2 * mass / (2 * hardware.soft_limit_brake_force)
        if hardware.soft_limit_margin < stopping:
            raise ConfigError(
                f"hardware.soft_limit_margin = {hardware.soft_limit_margin}: must be >= the "
                f"stopping distance from hardware.cart_velocity_limit = "
                f"{hardware.cart_velocity_limit} m/s under hardware.soft_limit_brake_force = "
                f"{hardware.soft_limit_brake_force} N with plant.cart_mass + plant.pole_mass = "
                f"{mass} kg: {stopping:.3f} m (raise the margin or the brake force, or lower "
                f"the velocity limit)")


def _check_watchdog(section: str, timeout: float, plant: PlantConfig) -> None:
    if timeout <= plant.control_period:
        raise ConfigError(f"{section}.command_watchdog_timeout = {timeout}: "
                          f"must be > plant.control_period = {plant.control_period}")
