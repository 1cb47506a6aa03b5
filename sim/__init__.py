"""fluidnpu.sim"""
