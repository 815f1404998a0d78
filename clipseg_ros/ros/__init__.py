"""The ROS shell: the lifecycle node (:mod:`.node`) and its process (:mod:`.process`), parameters
(:mod:`.settings`), camera inputs (:mod:`.cameras`, :mod:`.depth_inputs`), message conversion
both ways (:mod:`.conversions`, :mod:`.messages`, :mod:`.spatial_messages`), publishers
(:mod:`.outputs`), diagnostics, the prompt topics and services (:mod:`.prompt_interfaces`,
:mod:`.prompt_requests`), what the process asks of glibc (:mod:`.glibc`: thread names, a heap that
keeps frame buffers mapped) and small threading/log helpers.

May import: core, rclpy and message packages. Data flows one way: message -> array -> core ->
result -> message; no torch in message code.
"""
