# d3_perception on x86-64 with a full ROS 2 install (launch, ros2 CLI, rosbag2) and an NVIDIA GPU.
#   docker build -f docker/ros2.Dockerfile -t d3_perception:kilted .
#   docker run --gpus all --net host -it d3_perception:kilted ros2 launch d3_perception demo.launch.py
# TensorRT: install NVIDIA's `tensorrt` Python wheel (pip install tensorrt) or use an NGC base image; the
# backend imports it lazily and falls back to ONNX Runtime, then torch, when it is missing.
ARG ROS_DISTRO=kilted
FROM ros:${ROS_DISTRO}-ros-base
ARG ROS_DISTRO
SHELL ["/bin/bash", "-c"]

RUN apt-get update && apt-get install -y --no-install-recommends \
      python3-pip python3-venv python3-dev build-essential cmake git \
      ros-${ROS_DISTRO}-sensor-msgs ros-${ROS_DISTRO}-diagnostic-msgs ros-${ROS_DISTRO}-launch-ros \
      ros-${ROS_DISTRO}-launch-testing-ros ros-${ROS_DISTRO}-rviz2 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /ws/src/d3_perception
COPY . .
# Python dependencies not packaged by ROS (torch, diffusers, onnxruntime, rosbags) go into the system
# interpreter that ROS uses; --break-system-packages is needed on Ubuntu 24.04 images.
RUN pip3 install --break-system-packages -r requirements/dev.txt -c requirements/constraints.txt
WORKDIR /ws
RUN source /opt/ros/${ROS_DISTRO}/setup.bash && colcon build --packages-select d3_perception \
      --cmake-args -DBUILD_TESTING=OFF
RUN echo "source /ws/install/setup.bash" >> /root/.bashrc
ENV FASTDDS_DEFAULT_PROFILES_FILE=/ws/install/d3_perception/share/d3_perception/config/fastdds_shm.xml
CMD ["bash", "-lc", "source /ws/install/setup.bash && ros2 launch d3_perception demo.launch.py"]
