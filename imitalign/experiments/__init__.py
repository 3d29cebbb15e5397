"""The quickstart and the paper studies on the gym — one module each, shared helpers in ``common``.

    quickstart         imitalign quickstart                 every offline method on the gym, one table
    afd_sft            imitalign afd gym-sft                SFT on demonstrations vs the demonstrator
    afd_bon            imitalign afd gym-bon                best-of-N curves per reward source
    afd_distill        imitalign afd gym-distill            distilled vs reranked best-of-N
    afd_selfplay       imitalign afd gym-selfplay           SPIN and GSIL vs SFT
    iqlearn_frontier   imitalign iqlearn gym-frontier       IQLearn's λ sweep, its semi-online and online arms

They are built from the library's public pieces (``imitalign.train``, ``imitalign.loops``, ``imitalign.eval``);
nothing in the library imports them.
"""
