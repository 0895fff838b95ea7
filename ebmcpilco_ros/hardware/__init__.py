"""ROS-free rig access: wire protocol, serial driver, unit conversion, firmware emulator."""
