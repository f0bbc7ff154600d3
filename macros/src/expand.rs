//! Generates the `Handler` impl and the declared store types.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::DeriveInput;

use crate::attr::{HandlerAttrs, WindowKind};

pub(crate) fn handler(input: &DeriveInput, attrs: &HandlerAttrs) -> TokenStream {
    let ident = &input.ident;
    let vis = &input.vis;
    let value = &attrs.value;
    let key = attrs
        .key
        .as_ref()
        .map_or_else(|| quote!(::weir::Raw), ToTokens::to_token_stream);
    let topics = &attrs.topics;
    let group = option(attrs.group.as_ref());
    let batch_size = option(attrs.batch_size.as_ref());
    let linger_ms = option(attrs.linger_ms.as_ref());
    let queue_capacity = option(attrs.queue_capacity.as_ref());
    let delivery = if attrs.at_most_once {
        quote!(::weir::worker::Delivery::AtMostOnce)
    } else {
        quote!(::weir::worker::Delivery::AtLeastOnce)
    };
    let max_attempts = option(attrs.max_attempts.as_ref());
    let backoff_ms = option(attrs.backoff_ms.as_ref());
    let max_backoff_ms = option(attrs.max_backoff_ms.as_ref());
    let dead_letter_topic = option(attrs.dead_letter_topic.as_ref());
    let keep_key_order = option(attrs.keep_key_order.as_ref());
    let store_infos = attrs.stores.iter().map(|s| {
        let name = &s.name;
        let k = s.key.to_token_stream().to_string();
        let v = s.value.to_token_stream().to_string();
        quote!(::weir::__private::StoreInfo { name: #name, key: #k, value: #v })
    });
    let store_types = attrs.stores.iter().map(|s| {
        let (sident, name, k, v) = (&s.ident, &s.name, &s.key, &s.value);
        let doc = format!("The `{name}` state store of [`{ident}`].");
        quote! {
            #[doc = #doc]
            #[derive(Debug, Clone, Copy)]
            #vis struct #sident;

            impl ::weir::StoreDef for #sident {
                const NAME: &'static str = #name;
                type Key = #k;
                type Value = #v;
            }
        }
    });
    let window_names = attrs.windows.iter().map(|w| &w.store.name);
    let window_types = attrs.windows.iter().map(|w| {
        let s = &w.store;
        let (wident, name, k, v, grace) = (&s.ident, &s.name, &s.key, &s.value, w.grace_ms);
        let ms = |n: u64| quote!(::core::time::Duration::from_millis(#n));
        let (windows, what) = match w.kind {
            WindowKind::Tumbling { size_ms } => {
                let size = ms(size_ms);
                (
                    quote!(::weir::time::Windows::tumbling(#size)),
                    format!("tumbling {size_ms} ms"),
                )
            }
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            } => {
                let (size, advance) = (ms(size_ms), ms(advance_ms));
                (
                    quote!(::weir::time::Windows::hopping(#size, #advance)),
                    format!("hopping {size_ms} ms every {advance_ms} ms"),
                )
            }
            WindowKind::Session { gap_ms } => {
                let gap = ms(gap_ms);
                (
                    quote!(::weir::time::Windows::session(#gap)),
                    format!("session, gap {gap_ms} ms"),
                )
            }
        };
        let grace = ms(grace);
        let doc = format!("The `{name}` window store of [`{ident}`] ({what}).");
        quote! {
            #[doc = #doc]
            #[derive(Debug, Clone, Copy)]
            #vis struct #wident;

            impl ::weir::time::WindowDef for #wident {
                const NAME: &'static str = #name;
                const WINDOWS: ::weir::time::Windows = #windows.grace(#grace);
                type Key = #k;
                type Value = #v;
            }
        }
    });
    let table_infos = attrs.tables.iter().map(|t| {
        let (name, topic, global) = (&t.store.name, &t.topic, t.global);
        quote!(::weir::__private::TableInfo { name: #name, topic: #topic, global: #global })
    });
    let table_types = attrs.tables.iter().map(|t| {
        let (tident, name, v, topic, global) = (
            &t.store.ident,
            &t.store.name,
            &t.store.value,
            &t.topic,
            t.global,
        );
        let what = if global { "global table" } else { "table" };
        let doc = format!(
            "The `{name}` {what} of [`{ident}`] (topic `{}`).",
            topic.value()
        );
        quote! {
            #[doc = #doc]
            #[derive(Debug, Clone, Copy)]
            #vis struct #tident;

            impl ::weir::tables::TableDef for #tident {
                const NAME: &'static str = #name;
                const TOPIC: &'static str = #topic;
                const GLOBAL: bool = #global;
                type Value = #v;
            }
        }
    });
    let late_topic = option(attrs.late_topic.as_ref());
    let idle_close_after_ms = option(attrs.idle_close_after_ms.as_ref());
    let window_updates = attrs.window_updates;
    let event_time = attrs.event_time.as_ref().map(|field| {
        quote! {
            fn event_time(
                record: &::weir::Record<'_, ::weir::__private::ValueOf<Self>, ::weir::__private::KeyOf<Self>>,
            ) -> ::core::option::Option<i64> {
                <i64 as ::core::convert::TryFrom<_>>::try_from(record.value().#field).ok()
            }
        }
    });
    quote! {
        const _: () = {
            impl ::weir::Handler for #ident {
                type Key = #key;
                type Value = #value;

                #event_time

                fn settings() -> ::weir::__private::HandlerSettings {
                    ::weir::__private::HandlerSettings {
                        topics: &[#(#topics),*],
                        group: #group,
                        batch_size: #batch_size,
                        linger_ms: #linger_ms,
                        queue_capacity: #queue_capacity,
                        delivery: #delivery,
                        stores: &[#(#store_infos),*],
                        max_attempts: #max_attempts,
                        backoff_ms: #backoff_ms,
                        max_backoff_ms: #max_backoff_ms,
                        dead_letter_topic: #dead_letter_topic,
                        keep_key_order: #keep_key_order,
                        windows: &[#(#window_names),*],
                        late_topic: #late_topic,
                        idle_close_after_ms: #idle_close_after_ms,
                        window_updates: #window_updates,
                        tables: &[#(#table_infos),*],
                    }
                }
            }
        };
        #(#store_types)*
        #(#window_types)*
        #(#table_types)*
    }
}

fn option<T: ToTokens>(v: Option<&T>) -> TokenStream {
    match v {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    }
}
