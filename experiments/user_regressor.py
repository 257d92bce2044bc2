"""A regression model as a user would write it, trained outside reg2cls: the example to convert.

    python experiments/user_regressor.py user_regressor.pt        # trains it, saves its state_dict
    reg2cls convert --config experiments/user_model.yaml          # converts it into a classifier

It is trained here on scikit-learn's diabetes data with the features and target standardised on the
training split, which is what `--scaling standard --target-scaling standard` (the defaults) tell
reg2cls. Only the weights are saved (`torch.save(model.state_dict(), path)`): reg2cls loads them
with `torch.load(weights_only=True)` and never unpickles a model.
"""
import argparse

import torch
from torch import nn


class Regressor(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int = 32):
        super().__init__()
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.act2 = nn.ReLU()
        self.fc_out = nn.Linear(hidden_dim, 1)

    def forward(self, x):
        return self.fc_out(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the example regressor and save its state_dict.")
    parser.add_argument("path", help="where to write the checkpoint, e.g. user_regressor.pt")
    parser.add_argument("--epochs", type=int, default=200)
    args = parser.parse_args()

    from pipeline.config import Data
    from pipeline.data import prepare

    data = prepare(Data(source="builtin:diabetes"), seed=0)  # the same split and scaling reg2cls uses
    torch.manual_seed(0)
    model = Regressor(data.n_features)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(args.epochs):
        for idx in torch.randperm(len(data.train)).split(32):
            loss = nn.functional.mse_loss(model(data.train.x[idx]), data.train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        val = nn.functional.mse_loss(model(data.val.x), data.val.y).item()
    torch.save(model.state_dict(), args.path)
    print(f"saved {args.path}: validation MSE {val:.3f} (standardised target)")


if __name__ == "__main__":
    main()
