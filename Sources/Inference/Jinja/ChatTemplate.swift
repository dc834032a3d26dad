import Foundation

/// The chat template a GGUF model carries (`tokenizer.chat_template`, Jinja), rendered the way
/// the Hugging Face tooling renders it: `trim_blocks` and `lstrip_blocks` on, loop controls on,
/// `{% generation %}` tags transparent, `tojson` as Python's `json.dumps(ensure_ascii=False)`.
///
/// The template language is a subset of Jinja: statements `if/elif/else`, `for` (with `loop`,
/// tuple targets, `if` filters and `else`), `set` (names and namespace attributes), `macro`,
/// `break`, `continue`; Python-like expressions, filters, tests and string/dict methods. A
/// template using anything else fails to parse with `template.failed` naming the construct;
/// it never renders something silently different.
public struct ChatTemplate: Sendable {
    public let source: String
    let nodes: [TemplateNode]

    /// Templates are a few KiB; anything near this is not a chat template.
    static let maxSourceBytes = 1 << 20
    /// Output cap, so a template looping without end stops.
    static let maxOutputBytes = 16 << 20

    public init(_ source: String) throws(InferenceError) {
        guard source.utf8.count <= Self.maxSourceBytes else {
            throw InferenceError(.templateFailed, "chat template exceeds 1 MiB")
        }
        self.source = source
        let tokens = try TemplateLexer(source).tokenize()
        var parser = TemplateParser(tokens: tokens)
        nodes = try parser.parseAll()
    }

    /// Renders the conversation. `messages` are objects with at least `role` and `content`.
    public func render(
        messages: [JSONValue], addGenerationPrompt: Bool = true, bosToken: String = "", eosToken: String = "",
        extra: [String: JSONValue] = [:]
    ) throws(InferenceError) -> String {
        var globals: [String: TemplateValue] = [
            "messages": TemplateValue(json: .array(messages)),
            "add_generation_prompt": .bool(addGenerationPrompt),
            "bos_token": .string(bosToken),
            "eos_token": .string(eosToken),
        ]
        for (k, v) in extra { globals[k] = TemplateValue(json: v) }
        var interpreter = TemplateInterpreter(globals: globals)
        do {
            try interpreter.run(nodes)
        } catch let error as TemplateError {
            throw InferenceError(.templateFailed, "chat template: \(error.message)")
        } catch {
            throw InferenceError(.templateFailed, "chat template: \(error)")
        }
        return interpreter.output
    }
}

struct TemplateError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}
