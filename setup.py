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
    zip_safe=True,
    maintainer="ebmcpilco_ros maintainers",
    maintainer_email="maintainers@ebmcpilco-ros.invalid",
    description="EB-MC-PILCO cart-pole swing-up learning for ROS 2",
    license="Apache-2.0",
    tests_require=["pytest"],
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
