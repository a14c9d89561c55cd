"""PPO-based RLHF on the training core (OpenRLHF / DeepSpeed-Chat style, four models on DeepSpeed).

* :mod:`.advantages`: GAE and returns, masked whitening;
* :mod:`.losses`: clipped policy and value losses, entropy, token log-probs;
* :mod:`.kl`: per-token KL estimators (k1, k3) and the fixed / adaptive KL coefficient;
* :mod:`.rewards`: the registry of programmatic rewards;
* :mod:`.prompts`: prompts from chat JSONL;
* :mod:`.rollout`: generation with the actor and scoring (reference, reward, critic);
* :mod:`.stage`: :class:`PPOStage`, the stage the core's one step loop drives.
"""
