"""ebmcpilco_ros: EB-MC-PILCO cart-pole swing-up learning for ROS 2."""
__version__ = "0.1.0"
