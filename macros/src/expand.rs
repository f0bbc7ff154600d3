//! Generates the `Handler` impl and the declared store types.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::DeriveInput;

use crate::attr::HandlerAttrs;

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
        quote!(::weir::Delivery::AtMostOnce)
    } else {
        quote!(::weir::Delivery::AtLeastOnce)
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
        quote!(::weir::StoreInfo { name: #name, key: #k, value: #v })
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
    quote! {
        const _: () = {
            impl ::weir::Handler for #ident {
                type Key = #key;
                type Value = #value;

                fn settings() -> ::weir::HandlerSettings {
                    ::weir::HandlerSettings {
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
                    }
                }
            }
        };
        #(#store_types)*
    }
}

fn option<T: ToTokens>(v: Option<&T>) -> TokenStream {
    match v {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    }
}
