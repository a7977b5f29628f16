//! A session reuses the prefix it shares with the next prompt, with the same answer as a fresh
//! session; cancellation stops a generation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use imp::{
    generate, generate_in, generate_prepared, Conversation, Error, GenerationOptions, ImageId,
    ImpModel, LoadOptions, Position, PreparedPrompt, Prompt, Turn,
};

use crate::support::{image, load, model_dir};

fn fixture(model: &str) -> (ImpModel, image::RgbImage) {
    let model = load(&model_dir(model), &LoadOptions::default());
    (model, image("skimage_chelsea.png"))
}

fn options(max_new_tokens: usize) -> GenerationOptions {
    GenerationOptions {
        max_new_tokens,
        top_logprobs: 2,
        ..Default::default()
    }
}

#[test]
fn a_conversation_keeps_its_turns_and_answers_as_a_fresh_session() {
    for name in ["imp-v1.5-4b-phi3", "imp-v1-3b", "imp-v1.5-2b-qwen1.5"] {
        let (model, image) = fixture(name);
        let images = [image];
        let ask_about_the_image = |conversation: &mut Conversation| {
            conversation
                .ask(
                    &model,
                    "What is shown in this image?",
                    &images,
                    &options(6),
                    &mut |_| {},
                )
                .unwrap()
        };
        let mut conversation = Conversation::new(&model);
        let first = ask_about_the_image(&mut conversation);
        // A failing turn changes nothing.
        let wrong = conversation.ask(&model, "<image> <image>", &images, &options(6), &mut |_| {});
        assert!(
            matches!(&wrong, Err(Error::Prompt(m)) if m.contains("2 `<image>` marker(s) but 1")),
            "{name}: {:?}",
            wrong.map(|g| g.text)
        );
        let second = conversation
            .ask(
                &model,
                "And what colour is it?",
                &[],
                &options(6),
                &mut |_| {},
            )
            .unwrap();
        assert!(second.reused_tokens >= first.prompt_tokens, "{name}");

        let turns = vec![
            Turn {
                user: "<image>\nWhat is shown in this image?".into(),
                assistant: Some(first.text.clone()),
            },
            Turn {
                user: "And what colour is it?".into(),
                assistant: Some(second.text.clone()),
            },
        ];
        assert_eq!(conversation.turns(), turns, "{name}");
        let fresh = generate(
            &model,
            &Prompt::Chat(vec![turns[0].clone(), Turn::question(&turns[1].user)]),
            &images,
            &options(6),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(second.tokens, fresh.tokens, "{name}");

        conversation.clear();
        let again = ask_about_the_image(&mut conversation);
        assert_eq!(
            again.tokens, first.tokens,
            "{name}: a cleared conversation starts afresh"
        );
    }
}

#[test]
fn a_follow_up_turn_reuses_the_first_turn_and_answers_as_a_fresh_session() {
    for name in ["imp-v1.5-4b-phi3", "imp-v1-3b", "imp-v1.5-2b-qwen1.5"] {
        let (model, image) = fixture(name);
        let images = [image];
        let mut session = model.new_session();
        let question = "<image>\nWhat is shown in this image?";
        let first = generate_in(
            &model,
            &mut session,
            &Prompt::Chat(vec![Turn::question(question)]),
            &images,
            &options(6),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(first.reused_tokens, 0, "{name}");
        assert_eq!(first.logprobs.len(), first.tokens.len());
        assert_eq!(
            first.logprobs[0], first.top_logprobs[0][0].1,
            "{name}: greedy = top 1"
        );

        let follow_up = Prompt::Chat(vec![
            Turn {
                user: question.into(),
                assistant: Some(first.text.clone()),
            },
            Turn::question("And what colour is it?"),
        ]);
        let reused = generate_in(
            &model,
            &mut session,
            &follow_up,
            &images,
            &options(6),
            &mut |_| {},
        )
        .unwrap();
        let fresh = generate(&model, &follow_up, &images, &options(6), &mut |_| {}).unwrap();
        assert!(
            reused.reused_tokens >= first.prompt_tokens,
            "{name}: reused {} of the first prompt's {}",
            reused.reused_tokens,
            first.prompt_tokens
        );
        assert_eq!(fresh.reused_tokens, 0);
        assert_eq!(reused.tokens, fresh.tokens, "{name}");
        assert_eq!(reused.prompt_tokens, fresh.prompt_tokens);
        for (a, b) in reused.logprobs.iter().zip(&fresh.logprobs) {
            assert!((a - b).abs() < 1e-4, "{name}: log-probabilities {a} vs {b}");
        }
    }
}

#[test]
fn prepared_prompts_name_each_position() {
    let (model, image) = fixture("imp-v1.5-4b-phi3");
    let id = ImageId::of_image(&image);
    let prompt = Prompt::Question("What is this?".into());
    let prepared = PreparedPrompt::new(&model, &prompt, &[id]).unwrap();
    let rows = prepared
        .positions()
        .iter()
        .filter(|p| matches!(p, Position::ImageRow(i, _) if *i == id))
        .count();
    assert_eq!(rows, model.image_tokens());

    // The same prompt again: everything but the last position is reused.
    let embedded = [model.embed_image(&image).unwrap()];
    let mut session = model.new_session();
    let run = |session: &mut imp::Session| {
        generate_prepared(
            &model,
            session,
            &prepared,
            &embedded,
            &options(3),
            &mut |_| {},
        )
        .unwrap()
    };
    let first = run(&mut session);
    let again = run(&mut session);
    assert_eq!(again.reused_tokens, prepared.len() - 1);
    assert_eq!(first.tokens, again.tokens);

    let one_marker = Prompt::Chat(vec![Turn::question("<image>\nWhat is this?")]);
    let err = PreparedPrompt::new(&model, &one_marker, &[id, id]).unwrap_err();
    assert!(err.to_string().contains("marker"), "{err}");
}

#[test]
fn a_set_cancel_flag_stops_generation() {
    let (model, image) = fixture("imp-v1.5-4b-phi3");
    let options = GenerationOptions {
        cancel: Some(Arc::new(AtomicBool::new(true))),
        ..options(50)
    };
    let result = generate(
        &model,
        &Prompt::Question("Hi".into()),
        &[image],
        &options,
        &mut |_| {},
    );
    assert!(
        matches!(result, Err(Error::Cancelled)),
        "{:?}",
        result.map(|g| g.text)
    );
}

#[test]
fn a_cancel_set_by_the_text_callback_stops_before_the_next_piece() {
    let (model, image) = fixture("imp-v1.5-2b-qwen1.5");
    let cancel = Arc::new(AtomicBool::new(false));
    let options = GenerationOptions {
        cancel: Some(Arc::clone(&cancel)),
        ignore_stop_tokens: true,
        ..options(20)
    };
    let mut pieces = 0;
    let result = generate(
        &model,
        &Prompt::Question("Hi".into()),
        &[image],
        &options,
        &mut |_| {
            pieces += 1;
            cancel.store(true, Ordering::Relaxed);
        },
    );
    assert!(
        matches!(result, Err(Error::Cancelled)),
        "{:?}",
        result.map(|g| g.text)
    );
    assert_eq!(pieces, 1);
}
