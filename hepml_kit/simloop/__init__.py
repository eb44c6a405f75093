"""Simulation in the loop: fresh Monte Carlo streamed to the trainers (`streaming`), the model choosing
what to simulate next (`active`), and ensembles that say how sure they are (`ensemble`).

Taught in curriculum/12_simulation_in_the_loop.
"""
