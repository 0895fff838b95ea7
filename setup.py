"""ament_python package definition: console scripts per node plus the `ebmcpilco` command."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "ebmcpilco_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={PACKAGE: ["core/native/*.c"]},  # compiled at first use (native_rollout.py)
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    python_requires=">=3.10",
    # What `colcon test` looks for to run the suite with pytest (tests_require, which it also
    # reads, is gone from current setuptools); the pinned versions are in requirements.txt, the
    # rosdep keys in package.xml.
    extras_require={"test": ["pytest", "pytest-timeout", "pycodestyle", "pyflakes", "pillow",
                             "mcap", "mcap-ros2-support"]},
    zip_safe=True,
    # TODO(maintainer): no maintainer contact is known; the address is reserved (.invalid) so
    # that nothing is sent to a stranger. Put a real name and address here and in package.xml.
    maintainer="ebmcpilco_ros maintainers (contact not yet set)",
    maintainer_email="maintainers@ebmcpilco-ros.invalid",
    description="EB-MC-PILCO cart-pole swing-up learning for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "ebmcpilco = ebmcpilco_ros.cli:main",
            "sim_plant = ebmcpilco_ros.nodes.sim_plant:main",
            "policy_execution = ebmcpilco_ros.nodes.policy_execution:main",
            "model_learning = ebmcpilco_ros.nodes.model_learning:main",
            "policy_optimization = ebmcpilco_ros.nodes.policy_optimization:main",
            "trial_manager = ebmcpilco_ros.nodes.trial_manager:main",
            "hardware_interface = ebmcpilco_ros.nodes.hardware_interface:main",
        ],
    },
)
