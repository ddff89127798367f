//! The `#[interface]` attribute of `folio-rpc` (re-exported there as
//! `folio_rpc::interface`). See `folio-rpc`'s documentation.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::{format_ident, quote};
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{
    parse_macro_input, Attribute, Error, FnArg, GenericArgument, Ident, ItemTrait, LitStr, Meta,
    Pat, PathArguments, ReturnType, Token, TraitItem, Type,
};

struct Method {
    name: Ident,
    attrs: Vec<Attribute>,
    args: Vec<(Ident, Type)>,
    oneway: bool,
    ok: Type,
    err: Type,
    ret: Type,
}

/// Declares a Folio interface. See `folio_rpc::interface`.
#[proc_macro_attribute]
pub fn interface(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = parse_macro_input!(item as ItemTrait);
    match expand(attr.into(), item) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn wire_name(attr: Tokens, default: &Ident) -> syn::Result<String> {
    if attr.is_empty() {
        return Ok(default.unraw().to_string());
    }
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    let mut name = None;
    for meta in metas {
        match meta {
            Meta::NameValue(nv) if nv.path.is_ident("name") => {
                let syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) = nv.value
                else {
                    return Err(Error::new_spanned(
                        nv.value,
                        "name = \"...\" takes a string",
                    ));
                };
                name = Some(s.value());
            }
            other => return Err(Error::new_spanned(other, "expected name = \"wire.name\"")),
        }
    }
    Ok(name.unwrap_or_else(|| default.unraw().to_string()))
}

fn result_parts(ty: &Type) -> Option<(Type, Type)> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    Some((types.next()?, types.next()?))
}

fn parse_method(m: &mut syn::TraitItemFn) -> syn::Result<Method> {
    let sig = &m.sig;
    if sig.asyncness.is_none() {
        return Err(Error::new_spanned(
            sig.fn_token,
            "interface methods are `async fn`",
        ));
    }
    if m.default.is_some() {
        return Err(Error::new_spanned(
            &m.default,
            "interface methods have no default body",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(Error::new_spanned(
            &sig.generics,
            "interface methods cannot be generic",
        ));
    }
    if matches!(
        sig.ident.unraw().to_string().as_str(),
        "serve" | "object_ref" | "with_timeout"
    ) {
        return Err(Error::new_spanned(
            &sig.ident,
            "`serve`, `object_ref` and `with_timeout` are taken by the generated handle; rename the method",
        ));
    }
    let oneway = m.attrs.iter().any(|a| a.path().is_ident("oneway"));
    m.attrs.retain(|a| !a.path().is_ident("oneway"));
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
        _ => {
            return Err(Error::new_spanned(
                &sig.inputs,
                "the first parameter must be `&self`",
            ))
        }
    }
    let mut args = Vec::new();
    for input in inputs {
        let FnArg::Typed(pt) = input else {
            unreachable!()
        };
        let Pat::Ident(id) = &*pt.pat else {
            return Err(Error::new_spanned(
                &pt.pat,
                "parameters must be plain names",
            ));
        };
        args.push((id.ident.clone(), (*pt.ty).clone()));
    }
    let ret: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    let (ok, err) = if oneway {
        if !matches!(&sig.output, ReturnType::Default) {
            return Err(Error::new_spanned(
                &sig.output,
                "a #[oneway] method returns nothing",
            ));
        }
        (syn::parse_quote!(()), syn::parse_quote!(()))
    } else {
        result_parts(&ret).ok_or_else(|| {
            Error::new_spanned(
                &sig.output,
                "interface methods return Result<T, E> (E is the method's own error type), or are #[oneway]",
            )
        })?
    };
    Ok(Method {
        name: sig.ident.clone(),
        attrs: m.attrs.clone(),
        args,
        oneway,
        ok,
        err,
        ret,
    })
}

fn expand(attr: Tokens, mut item: ItemTrait) -> syn::Result<Tokens> {
    let name = item.ident.clone();
    let vis = item.vis.clone();
    let wire = LitStr::new(&wire_name(attr, &name)?, Span::call_site());
    if !item.generics.params.is_empty() {
        return Err(Error::new_spanned(
            &item.generics,
            "interfaces cannot be generic",
        ));
    }
    let mut methods = Vec::new();
    for ti in &mut item.items {
        match ti {
            TraitItem::Fn(f) => methods.push(parse_method(f)?),
            other => {
                return Err(Error::new_spanned(
                    other,
                    "an interface contains only `async fn` methods",
                ))
            }
        }
    }
    // Every method `foo` with an answer gets a `foo_promise` twin on the handle.
    for m in &methods {
        let taken = m.name.unraw().to_string();
        if let Some(base) = taken.strip_suffix("_promise") {
            if methods.iter().any(|o| !o.oneway && o.name.unraw() == base) {
                return Err(Error::new_spanned(
                    &m.name,
                    format!("`{taken}` is taken by the promise twin of `{base}`; rename one"),
                ));
            }
        }
    }
    let ref_ty = format_ident!("{}Ref", name);
    let server_ty = format_ident!("{}Server", name);
    let trait_attrs = &item.attrs;
    let rpc = quote!(::folio_rpc);

    let trait_methods = methods.iter().map(|m| {
        let Method {
            name, attrs, args, ret, ..
        } = m;
        let params = args.iter().map(|(n, t)| quote!(#n: #t));
        quote! {
            #(#attrs)*
            fn #name(&self, #(#params),*) -> impl ::core::future::Future<Output = #ret> + ::core::marker::Send;
        }
    });

    let client_methods = methods.iter().map(|m| {
        let Method {
            name,
            attrs,
            args,
            oneway,
            ok,
            err,
            ..
        } = m;
        let params: Vec<_> = args.iter().map(|(n, t)| quote!(#n: #t)).collect();
        let names: Vec<_> = args.iter().map(|(n, _)| n).collect();
        let method_wire = LitStr::new(&name.unraw().to_string(), name.span());
        if *oneway {
            quote! {
                #(#attrs)*
                ///
                /// One-way: returns once the call is queued; no answer comes back.
                pub async fn #name(&self, #(#params),*) -> ::core::result::Result<(), #rpc::CallError<::core::convert::Infallible>> {
                    self.0.call_oneway(#wire, #method_wire, &(#(#names,)*)).await
                }
            }
        } else {
            let promise_name = format_ident!("{}_promise", name.unraw());
            let promise_doc = format!(
                "Sends `{}` and returns, once it is queued, the promise of its answer: \
                 references the answer carries can be called before it arrives (promise \
                 pipelining, see `folio_rpc::promise`). Awaiting the promise gives what \
                 awaiting `{}` gives.",
                name.unraw(),
                name.unraw()
            );
            quote! {
                #(#attrs)*
                pub async fn #name(&self, #(#params),*) -> ::core::result::Result<#ok, #rpc::CallError<#err>> {
                    self.0.call::<_, #ok, #err>(#wire, #method_wire, &(#(#names,)*)).await
                }

                #[doc = #promise_doc]
                pub async fn #promise_name(&self, #(#params),*) -> ::core::result::Result<#rpc::Promise<#ok, #err>, #rpc::CallError<#err>> {
                    self.0.call_promise::<_, #ok, #err>(#wire, #method_wire, &(#(#names,)*)).await
                }
            }
        }
    });

    let dispatch_arms = methods.iter().map(|m| {
        let Method {
            name,
            args,
            oneway,
            ok,
            err,
            ..
        } = m;
        let names: Vec<_> = args.iter().map(|(n, _)| n).collect();
        let types: Vec<_> = args.iter().map(|(_, t)| t).collect();
        let method_wire = LitStr::new(&name.unraw().to_string(), name.span());
        let run = if *oneway {
            quote! {
                __folio_this.0.#name(#(#names),*).await;
                __folio_ctx.encode_reply::<(), ()>(::core::result::Result::Ok(()))
            }
        } else {
            quote! {
                let __folio_result: ::core::result::Result<#ok, #err> = __folio_this.0.#name(#(#names),*).await;
                __folio_ctx.encode_reply(__folio_result)
            }
        };
        quote! {
            #method_wire => {
                #[allow(unused_parens)]
                let (#(#names,)*): (#(#types,)*) = __folio_ctx.decode_args(__folio_method, __folio_args)?;
                let __folio_this = self;
                ::core::result::Result::Ok(::std::boxed::Box::pin(async move { #run }))
            }
        }
    });

    let ref_doc = format!(
        "A handle to a `{name}` object (local or remote): one async method per interface method."
    );
    let server_doc =
        format!("Serves a `{name}` implementation: wire dispatch generated by `#[interface]`.");
    let serve_doc = format!("Wraps a local `{name}` implementation so that it can be registered or passed as a reference.");
    Ok(quote! {
        #(#trait_attrs)*
        #vis trait #name: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#trait_methods)*
        }

        #[doc = #ref_doc]
        #[derive(Clone, Debug)]
        #vis struct #ref_ty(#rpc::ObjectRef);

        impl #ref_ty {
            /// The interface's name on the wire.
            pub const INTERFACE: &'static str = #wire;

            #[doc = #serve_doc]
            pub fn serve<__FolioImpl: #name>(object: __FolioImpl) -> Self {
                #ref_ty(#rpc::ObjectRef::local(::std::sync::Arc::new(#server_ty(object))))
            }

            /// The untyped reference inside.
            pub fn object_ref(&self) -> &#rpc::ObjectRef {
                &self.0
            }

            /// This handle, with its calls given up after `timeout` instead of the Tub's
            /// `call_timeout` (`None`: no deadline). See `ObjectRef::with_timeout`.
            pub fn with_timeout(&self, timeout: ::core::option::Option<::std::time::Duration>) -> Self {
                #ref_ty(self.0.with_timeout(timeout))
            }

            #(#client_methods)*
        }

        impl #rpc::TypedRef for #ref_ty {
            const INTERFACE: &'static str = #wire;

            fn from_object_ref(r: #rpc::ObjectRef) -> ::core::result::Result<Self, #rpc::Refusal> {
                r.check_interface(#wire)?;
                ::core::result::Result::Ok(#ref_ty(r))
            }

            fn object_ref(&self) -> &#rpc::ObjectRef {
                &self.0
            }
        }

        impl ::core::convert::From<#ref_ty> for #rpc::ObjectRef {
            fn from(r: #ref_ty) -> Self {
                r.0
            }
        }

        impl #rpc::__private::serde::Serialize for #ref_ty {
            fn serialize<S: #rpc::__private::serde::Serializer>(&self, s: S) -> ::core::result::Result<S::Ok, S::Error> {
                #rpc::__private::serde::Serialize::serialize(&self.0, s)
            }
        }

        impl<'de> #rpc::__private::serde::Deserialize<'de> for #ref_ty {
            fn deserialize<D: #rpc::__private::serde::Deserializer<'de>>(d: D) -> ::core::result::Result<Self, D::Error> {
                #rpc::object::deserialize_typed(d)
            }
        }

        #[doc = #server_doc]
        #vis struct #server_ty<__FolioImpl>(pub __FolioImpl);

        impl<__FolioImpl: #name> #rpc::Dispatch for #server_ty<__FolioImpl> {
            fn interface(&self) -> &'static str {
                #wire
            }

            fn call(
                self: ::std::sync::Arc<Self>,
                __folio_method: &str,
                __folio_args: &[u8],
                __folio_ctx: #rpc::CallContext,
            ) -> ::core::result::Result<#rpc::ReplyFuture, #rpc::Refusal> {
                match __folio_method {
                    #(#dispatch_arms)*
                    _ => ::core::result::Result::Err(#rpc::Refusal::UnknownMethod {
                        interface: #wire.into(),
                        method: __folio_method.into(),
                    }),
                }
            }
        }
    })
}
