"""fluidnpu.sched"""
