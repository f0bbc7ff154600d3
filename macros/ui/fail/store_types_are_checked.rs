use weir::prelude::*;

#[derive(Handler)]
#[handler(value = Utf8, store(Totals, key = str, value = u64))]
struct Orders;

impl Process for Orders {
    type Error = weir::Error;

    async fn process(&self, rec: Record<'_, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        ctx.store::<Totals>().put(rec.value(), &"not a number")
    }
}

fn main() {}
