"""`ebmcpilco bench link` and `ebmcpilco bench roundtrip`: the rig's serial path, measured against
the firmware emulator through a real pty.

link        STATE streaming with a fraction of the bytes corrupted in both directions, through
            the driver and the rig layer, which answers every STATE with a command (alternating
            two known forces). Reports what was injected, what each side counted (frames, CRC
            errors, malformed, resyncs, sequence drops, rejected frames) and checks that every
            command the emulator applied is one the host sent: corruption never became a command.
roundtrip   The emulator in probe mode (each STATE names its tick in the pole encoder count; the
            plant is disconnected) in its own process, the hardware_interface node in another,
            and a responder node here that answers each JointState with a command naming the
            same tick. The emulator times STATE written -> matching COMMAND read: pty, driver,
            conversion, DDS to the responder, DDS back, the node's command callback, driver, pty.
"""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from ..hardware.conversion import duty_to_force, pole_counts
from ..hardware.driver import set_thread_priority
from ..hardware.emulator import (EmulatorConfig, FirmwareEmulator, matching_hardware_config,
                                 probe_code)
from ..hardware.protocol import COMMAND_FULL_SCALE, Command
from ..hardware.rig import Rig

LINK_FORCE = 0.5            # [N] the link bench alternates +-this: the cart only jitters
CLEAN_FRAMES = 20           # valid STATEs after corruption stops, so every loss has been seen
WAIT = 5.0                  # [s] bound on anything that should take milliseconds
PROGRESS_PERIOD = 10.0      # [s] between progress lines of a long run
ROUNDTRIP_WARMUP = 1.0      # [s] of answered states discarded (discovery, first allocations)
STATE_DEPTH = 10            # joint states queued for the responder (it answers every one)
EMULATOR_PRIORITY_ABOVE = 20  # the probe emulator's SCHED_FIFO priority over the rig node's


def percentiles(values_s: list[float]) -> dict[str, float]:
    from .realtime import percentiles as of

    return of(values_s)


def machine() -> dict[str, Any]:
    from .bench import machine_info

    return machine_info()


# -- link -------------------------------------------------------------------------------------

def link(seconds: float = 60.0, corrupt: float = 0.01, seed: int = 0,
         log: Any = None) -> dict[str, Any]:
    """Stream for `seconds` with `corrupt` of the bytes corrupted both ways; figures + checks."""
    emulator = FirmwareEmulator(EmulatorConfig(), seed=seed)
    emulator.start()
    cfg = matching_hardware_config(emulator.config, emulator.device_path)
    forces = (LINK_FORCE, -LINK_FORCE)
    # Every (motor, enable) the host sends (the forces, zero, and whatever the soft limits make
    # of them once lost commands let the cart drift to the margin): the reference the emulator's
    # applied commands are checked against.
    sent_by_host: set[tuple[int, bool]] = set()
    count = [0]
    unexpected: list[tuple[int, bool]] = []
    applied = [0]
    crashed = False

    def answer(_measurement: Any, _sample: Any) -> None:   # a command per STATE
        count[0] += 1
        rig.set_force(forces[count[0] % 2])

    def drain() -> None:
        """Check the emulator's applied commands as they come (its log is bounded)."""
        while emulator.command_log:
            _t, motor, enable = emulator.command_log.popleft()
            applied[0] += 1
            if (motor, bool(enable)) not in sent_by_host:
                unexpected.append((motor, enable))

    rig = Rig(cfg, on_measurement=answer)
    send = rig.driver.send_command

    def recording(duty: float, enable: bool) -> bool:   # called under the rig's send lock
        sent_by_host.add((Command.from_duty(duty, enable).motor, bool(enable)))
        return send(duty, enable)
    rig.driver.send_command = recording  # type: ignore[method-assign]
    try:
        rig.open()
        assert rig.enable(), "the emulator did not accept the enable"
        drain()
        before = rig.driver.stats()
        mcu_before = emulator.stats.rx.copy()
        emulator.faults.corrupt_tx = emulator.faults.corrupt_rx = corrupt
        start = time.monotonic()
        next_note = start + PROGRESS_PERIOD
        while (left := start + seconds - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            drain()
            if log is not None and time.monotonic() >= next_note:
                stats = rig.driver.stats()
                log(f"  {time.monotonic() - start:4.0f} s: {stats.frames - before.frames} "
                    f"frames, {stats.decoder.bad_frames - before.decoder.bad_frames} bad, "
                    f"{stats.drops - before.drops} lost")
                next_note += PROGRESS_PERIOD
        emulator.faults.corrupt_tx = emulator.faults.corrupt_rx = 0.0
        latest = rig.driver.latest()
        if rig.driver.wait_state((latest.index if latest else 0) + CLEAN_FRAMES, WAIT) is None:
            crashed = True
        after = rig.driver.stats()
        rig.disable()
    except Exception:  # noqa: BLE001 - the figure to report is that it failed
        crashed = True
        raise
    finally:
        rig.close()
        emulator.stop()
        drain()
    injected = {"byte_fraction": corrupt, "bytes_corrupted_tx": emulator.stats.bytes_corrupted_tx,
                "bytes_corrupted_rx": emulator.stats.bytes_corrupted_rx,
                "frames_corrupted_tx": emulator.stats.frames_corrupted}
    host_decoder = {k: getattr(after.decoder, k) - getattr(before.decoder, k)
                    for k in ("frames", "crc_errors", "malformed", "oversized", "resyncs",
                              "drops", "sequence_resets")}
    host = {**host_decoder, "bad_frames": after.decoder.bad_frames - before.decoder.bad_frames,
            "timeouts": after.timeouts - before.timeouts,
            "link_losses": after.link_losses - before.link_losses,
            "reconnects": after.reconnects - before.reconnects,
            "callback_errors": after.callback_errors,
            "commands_sent": after.commands_sent - before.commands_sent,
            "write_errors": after.write_errors - before.write_errors}
    rx = emulator.stats.rx
    mcu = {"frames": rx.frames - mcu_before.frames,
           "rejected_frames": rx.bad_frames - mcu_before.bad_frames,
           "crc_errors": rx.crc_errors - mcu_before.crc_errors,
           "malformed": rx.malformed - mcu_before.malformed,
           "drops": rx.drops - mcu_before.drops,
           "commands_applied": applied[0],
           "distinct_commands_sent": sorted(sent_by_host),
           "unexpected_commands_applied": len(unexpected),
           "unexpected_examples": unexpected[:10]}
    accounted = injected["frames_corrupted_tx"] <= host["drops"]
    ok = (not crashed and not unexpected and accounted and host["link_losses"] == 0
          and host["callback_errors"] == 0)
    return {"seconds": seconds, "state_rate_hz": emulator.config.state_rate_hz,
            "injected": injected, "host": host, "mcu": mcu, "crashed": crashed,
            "every_corrupted_frame_counted": accounted, "ok": ok, "machine": machine()}


def link_text(result: dict[str, Any]) -> str:
    inj, host, mcu = result["injected"], result["host"], result["mcu"]
    return "\n".join([
        f"{result['seconds']:g} s at {result['state_rate_hz']} Hz, "
        f"{inj['byte_fraction'] * 100:g} % of bytes corrupted both ways:",
        f"  injected: {inj['bytes_corrupted_tx']} bytes in {inj['frames_corrupted_tx']} STATE/"
        f"CONFIG/HEARTBEAT frames (MCU -> host), {inj['bytes_corrupted_rx']} bytes host -> MCU",
        f"  host: {host['frames']} valid frames, {host['bad_frames']} bad ({host['crc_errors']} "
        f"CRC, {host['malformed']} malformed, {host['oversized']} oversized), {host['resyncs']} "
        f"resyncs, {host['drops']} lost by sequence, {host['timeouts']} timeouts, "
        f"{host['link_losses']} link losses",
        f"  MCU: {mcu['frames']} valid frames, {mcu['rejected_frames']} rejected "
        f"({mcu['crc_errors']} CRC, {mcu['malformed']} malformed), {mcu['drops']} lost; "
        f"{mcu['commands_applied']} commands applied of {host['commands_sent']} sent, "
        f"{mcu['unexpected_commands_applied']} not sent by the host",
        f"  {'OK' if result['ok'] else 'FAILED'}: " + ", ".join([
            "every corrupted frame counted" if result["every_corrupted_frame_counted"]
            else "CORRUPTED FRAMES WENT UNCOUNTED",
            "no corrupted command applied" if not mcu["unexpected_commands_applied"]
            else "CORRUPTED COMMANDS APPLIED",
            "no crash" if not result["crashed"] else "CRASHED"])])


# -- roundtrip --------------------------------------------------------------------------------

def probe_emulator_main(argv: list[str]) -> int:
    """The emulated MCU in probe mode, in its own process (its timestamps never wait for the
    bench's interpreter lock), SCHED_FIFO at the priority given as the first argument (0: normal;
    the firmware thread inherits it), as an MCU preempts the host. Lines on stdin/stdout: it
    prints the device path; `start` -> the tick; `stop` -> the results as JSON, then it exits."""
    set_thread_priority(int(argv[0]) if argv else 0, "the probe emulator")
    emulator = FirmwareEmulator(EmulatorConfig(), probe=True)
    print(emulator.start(), flush=True)
    first_tick = 0
    try:
        for line in sys.stdin:
            if line.strip() == "start":
                first_tick = emulator.snapshot().tick
                print(first_tick, flush=True)
            elif line.strip() == "stop":
                break
        last_tick = emulator.snapshot().tick
        trips = [dt for tick, dt in list(emulator.round_trips) if first_tick < tick <= last_tick]
        print(json.dumps({"states": last_tick - first_tick, "round_trips": trips,
                          "overruns": emulator.stats.overruns,
                          "watchdog_trips": emulator.stats.watchdog_trips}), flush=True)
    finally:
        emulator.stop()
    return 0


class _LineReader:
    """Lines of a child's stdout, read with a timeout."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in stream],
                         daemon=True).start()

    def get(self, timeout: float, what: str) -> str:
        try:
            return self.lines.get(timeout=timeout).strip()
        except queue.Empty:
            raise RuntimeError(f"the probe emulator did not {what} within {timeout:g} s")


class _Responder:
    """Answers each JointState with the command that names the STATE it came from; stands in
    for the execution node, with its realtime priority (DDS receive and listener threads)."""

    def __init__(self, hardware: Any, names: Any, priority: int) -> None:
        import rclpy
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        from ..nodes import qos, sampling
        self.hardware = hardware
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("roundtrip_responder", context=self.context)
        self.sampler = sampling.sampler_node(self.node)
        self.msg_type = Float64MultiArray
        self.pub = self.node.create_publisher(Float64MultiArray, names.command_topic,
                                              qos.sensor_qos())
        self.answered = 0
        self.first = threading.Event()
        self.listener = sampling.SampleListener(self.node, self.sampler, JointState,
                                                self.node.resolve_topic_name(names.state_topic),
                                                STATE_DEPTH, self._on_state, priority,
                                                "responder")
        sampling.set_dds_receive_priority(self.node, priority)

    def _on_state(self, msg: Any, _received_ns: int) -> None:
        tick = pole_counts(float(msg.position[1]), self.hardware)
        force = duty_to_force(probe_code(tick) / COMMAND_FULL_SCALE, self.hardware)
        self.pub.publish(self.msg_type(data=[force]))
        self.answered += 1
        self.first.set()

    def close(self) -> None:
        import rclpy

        self.listener.close()
        self.sampler.destroy_node()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def roundtrip(seconds: float = 10.0, config_path: str | Path | None = None,
              overrides: Mapping[str, Mapping[str, Any]] | None = None,
              log_dir: str | Path | None = None, startup_timeout: float = 120.0
              ) -> dict[str, Any]:
    """STATE frame -> JointState -> command -> COMMAND frame, timed by the emulator, on this
    process's ROS domain and DDS settings (`ebmcpilco bench roundtrip` picks a private domain
    where none is set)."""
    from ..nodes.bringup import Graph, flatten, validate
    from ..core.config import find_config

    config_path = Path(config_path) if config_path else find_config("rig_example")
    overrides = overrides or {}
    _config, parts = validate(config_path, overrides)
    rt = parts["hardware"].realtime_priority
    emulator = subprocess.Popen([sys.executable, "-m", "ebmcpilco_ros.tools.rigbench",
                                 str(rt + EMULATOR_PRIORITY_ABOVE if rt else 0)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines = _LineReader(emulator.stdout)
    graph = None
    responder = None
    try:
        port = lines.get(startup_timeout, "start")
        hardware = parts["hardware"].replace(port=port)
        graph = Graph(config_path, {**flatten(overrides), "hardware.port": port},
                      nodes=("hardware_interface",),
                      log_dir=log_dir or tempfile.mkdtemp(prefix="ebmcpilco-roundtrip-"))
        graph.start()
        responder = _Responder(hardware, parts["nodes"], parts["execution"].realtime_priority)
        deadline = time.monotonic() + startup_timeout
        while not responder.first.wait(0.2):
            if graph.exited() or time.monotonic() > deadline:
                raise RuntimeError("no joint state from hardware_interface:\n"
                                   + graph.log_tail("hardware_interface"))
        time.sleep(ROUNDTRIP_WARMUP)
        emulator.stdin.write("start\n")
        emulator.stdin.flush()
        lines.get(WAIT, "answer")
        time.sleep(seconds)
        emulator.stdin.write("stop\n")
        emulator.stdin.flush()
        result = json.loads(lines.get(WAIT * 4, "report"))
    finally:
        if responder is not None:
            responder.close()
        if graph is not None:
            graph.stop()
        try:
            emulator.stdin.close()   # a child still waiting for `stop` ends at end of input
            emulator.wait(WAIT)
        except (OSError, subprocess.TimeoutExpired):
            emulator.kill()
            emulator.wait()
    trips = result["round_trips"]
    return {"seconds": seconds, "states": result["states"], "samples": len(trips),
            "realtime_priority": {"hardware": rt,
                                  "responder": parts["execution"].realtime_priority},
            "unanswered": result["states"] - len(trips),
            "round_trip_ms": percentiles(trips),
            "emulator_overruns": result["overruns"],
            "mcu_watchdog_trips": result["watchdog_trips"], "machine": machine()}


def roundtrip_text(result: dict[str, Any]) -> str:
    ms = result["round_trip_ms"]
    return (f"state frame -> JointState -> command frame, {result['samples']} of "
            f"{result['states']} states answered in {result['seconds']:g} s: "
            f"p50 {ms['p50']:.3f} ms, p99 {ms['p99']:.3f} ms, max {ms['max']:.3f} ms "
            f"(load average {result['machine']['load_average'][0]:.2f} on "
            f"{result['machine']['cores']} cores)")


if __name__ == "__main__":
    sys.exit(probe_emulator_main(sys.argv[1:]))
