"""Position states z of PDM section 3.1 as class indices of the model's ``state_head``.

The paper writes z in {0, 1, -1}: 0 = unchanged ("keep"), 1 = to be generated, -1 = to be replaced
("revise"). Class indices (what ``state_logits[..., c]`` and the state targets use):
"""

KEEP = 0  # z = 0: leave the position as it is (also: a masked position that is not generated now)
GENERATE = 1  # z = 1: a [mask] position written at this stage
REVISE = 2  # z = -1: a written token that is wrong and is rewritten (section 3.3)
NUM_STATES = 3
NAMES = ("keep", "generate", "revise")
PAPER_Z = (0, 1, -1)  # PAPER_Z[class index] = the paper's z value
