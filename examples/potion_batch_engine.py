"""A batch-aware engine: a draft recipe per ingredient, a full potion per flush of three.

Run: python examples/potion_batch_engine.py
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.engines import Engine, EngineContext, EvalInputs, EvalResult
from flock_llm.subscription import BatchSpec


@flock_type
class Ingredient(BaseModel):
    name: str
    potency: int


@flock_type
class PotionRecipe(BaseModel):
    title: str
    ingredients: list[str]
    total_potency: int
    steps: list[str]


class PotionBatchEngine(Engine):
    """Drafts a one-ingredient recipe per item; brews a full potion from a whole batch."""

    async def evaluate(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        ingredient = inputs.first_as(Ingredient)
        assert ingredient is not None
        return EvalResult.from_object(
            PotionRecipe(
                title=f"Draft: essence of {ingredient.name}",
                ingredients=[ingredient.name],
                total_potency=ingredient.potency,
                steps=[f"Steep {ingredient.name} for {ingredient.potency} minutes"],
            )
        )

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        ingredients = inputs.all_as(Ingredient)
        names = [i.name for i in ingredients]
        steps = [f"Add {i.name} ({i.potency})" for i in sorted(ingredients, key=lambda i: -i.potency)]
        return EvalResult.from_object(
            PotionRecipe(
                title=f"Potion of {' & '.join(names)} "
                f"({ctx.flush_reason} flush, {ctx.batch_size}/{ctx.configured_size})",
                ingredients=names,
                total_potency=sum(i.potency for i in ingredients),
                steps=[*steps, "Stir thrice, widdershins"],
            )
        )


async def main() -> None:
    async with Flock() as flock:
        (
            flock.agent("potion_brewer")
            .description("Brews a potion from every three ingredients")
            .consumes(Ingredient, batch=BatchSpec(size=3, timeout=timedelta(seconds=5)))
            .publishes(PotionRecipe)
            .with_engines(PotionBatchEngine())
        )
        (flock.agent("recipe_drafter").consumes(Ingredient).publishes(PotionRecipe).with_engines(PotionBatchEngine()))
        names = [("moonpetal", 3), ("dragon scale", 9), ("fog essence", 2), ("troll sweat", 5)]
        await flock.publish_many(Ingredient(name=n, potency=p) for n, p in names)
        await flock.run_until_idle()
        await flock.shutdown()  # flushes the partial batch (troll sweat)
        for recipe in await flock.store.get_by_type(PotionRecipe):
            print(f"{recipe.title}: potency {recipe.total_potency}; {'; '.join(recipe.steps)}")


if __name__ == "__main__":
    asyncio.run(main())
