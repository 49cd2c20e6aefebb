"""The decision core: plain synchronous Python, no I/O, no clock (time is passed in).

`governor.Governor` is the façade the service drives, one method per command; the modules beside it each hold one
concept of the decision (matching, reservations, breakers, dedupe, rules, the state codec).
"""
