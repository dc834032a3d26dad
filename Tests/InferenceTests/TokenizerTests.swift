import Foundation
@testable import Inference
import TestSupport
import Testing

/// The tokenizer against llama.cpp's on the same vocabulary, and the chat template engine
/// against llama-cpp-python's Jinja2 rendering.
@Suite struct TokenizerTests {
    /// Texts chosen to exercise every branch of the pre-tokenizers: contractions, digit runs,
    /// whitespace runs before letters, digits, punctuation and the end, newlines, non-ASCII letters,
    /// numbers and spaces, emoji (4-byte UTF-8), control characters, special tokens.
    static let texts = [
        "Hello, world!", "  leading spaces", "trailing spaces   ", "tabs\tand\nnewlines\n\n\nend",
        "I'm we're they've it'd we'll",
        "I'M WE'RE", "3.14159 and 1,000,000 and 2026-12-01", "x=1+2*3; y = [4, 5]", "  \n  \t ", "a  b   c    d",
        "naïve café résumé — “quotes” … ‘single’", "Ünïcödé ÀÉÎÕÜ", "日本語のテキストと漢字", "Привет, мир", "مرحبا بالعالم",
        "emoji 🙂👍🏽 and 🇫🇷 flags", "zero\u{200B}width and\u{00A0}nbsp and\u{3000}ideographic", "control \u{1}\u{2} chars",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "text<|im_end|>more", "<|im_start|><|im_start|>",
        "</s><s>[INST]", "١٢٣ ٤٥٦ Ⅻ ½", "don't  stop\n\n  believing", "a'b 'quoted' ''", "...!!!???", "\n", " ",
        String(repeating: "ab", count: 300), String(repeating: "9", count: 50),
    ]

    @Test func tokenIDsMatchLlamaCpp() async throws {
        let env = try References.environment.get()
        let dir = try TemporaryDirectory("tokenize")
        try JSONSerialization.data(withJSONObject: Self.texts).write(to: dir.file("texts.json"))
        try await References.run(["tokenize", env.model.path, dir.file("texts.json").path, dir.file("out.json").path])
        let reference = try jsonObject(dir.file("out.json")) as! [[String: [Int]]]
        let tokenizer = try Tokenizer(gguf: GGUFFile(url: env.model))
        for (text, ref) in zip(Self.texts, reference) {
            #expect(
                tokenizer.encode(text, parseSpecial: true) == ref["special"],
                "special tokens parsed: \(text.debugDescription)")
            #expect(
                tokenizer.encode(text, parseSpecial: false) == ref["plain"],
                "special tokens as text: \(text.debugDescription)")
        }
    }

    /// The qwen2 and llama3 pre-tokenizers (and llama3's whole-word vocabulary lookup), on the
    /// same vocabulary written into small models that declare them.
    @Test(arguments: ["qwen2", "llama3"])
    func otherPreTokenizersMatchLlamaCpp(_ pre: String) async throws {
        let env = try References.environment.get()
        let dir = try TemporaryDirectory("pre-\(pre)")
        try await onCPULane {
            var w = SyntheticModel.make(
                architecture: "qwen2", weights: .f16, tokenizerFrom: try GGUFFile(url: env.model),
                shape: .init(embedding: 32, heads: 1, kvHeads: 1, feedForward: 32, layers: 1))
            let i = w.metadata.firstIndex { $0.0 == "tokenizer.ggml.pre" }!
            w.metadata[i] = ("tokenizer.ggml.pre", .string(pre == "llama3" ? "llama-bpe" : pre))
            try w.write(to: dir.file("m.gguf"))
        }
        try JSONSerialization.data(withJSONObject: Self.texts).write(to: dir.file("texts.json"))
        try await References.run([
            "tokenize", dir.file("m.gguf").path, dir.file("texts.json").path, dir.file("out.json").path,
        ])
        let reference = try jsonObject(dir.file("out.json")) as! [[String: [Int]]]
        let tokenizer = try Tokenizer(gguf: GGUFFile(url: dir.file("m.gguf")))
        #expect(tokenizer.preTokenizer.rawValue == pre)
        for (text, ref) in zip(Self.texts, reference) {
            #expect(tokenizer.encode(text, parseSpecial: true) == ref["special"], "\(pre): \(text.debugDescription)")
        }
    }

    @Test func decodingRestoresTheText() throws {
        let env = try References.environment.get()
        let tokenizer = try Tokenizer(gguf: GGUFFile(url: env.model))
        for text in Self.texts {
            #expect(tokenizer.decode(tokenizer.encode(text, parseSpecial: false)) == text)
        }
        // Control tokens are not text unless asked for.
        let ids = tokenizer.encode("<|im_start|>user", parseSpecial: true)
        #expect(tokenizer.decode(ids) == "user")
        #expect(tokenizer.decode(ids, special: true) == "<|im_start|>user")
    }

    @Test func streamedPiecesNeverSplitACharacter() {
        let bytes = Array("a€😀".utf8)  // 1, 3 and 4 bytes
        var complete = [Int]()
        for n in 0...bytes.count { complete.append(Generator.completeUTF8Prefix(Array(bytes.prefix(n)))) }
        #expect(complete == [0, 1, 1, 1, 4, 4, 4, 4, 8])
    }

    @Test func stopSequencesAreHeldBackAndCut() {
        let stops = [Array("END".utf8)]
        #expect(Generator.partialStopSuffix(ArraySlice(Array("text E".utf8)), stops: stops) == 1)
        #expect(Generator.partialStopSuffix(ArraySlice(Array("text EN".utf8)), stops: stops) == 2)
        #expect(Generator.partialStopSuffix(ArraySlice(Array("text X".utf8)), stops: stops) == 0)
        #expect(Generator.firstStop(in: ArraySlice(Array("abENDcd".utf8)), stops: stops, from: 0)?.0 == 2)
    }
}

@Suite struct ChatTemplateTests {
    /// Templates in the styles models ship: ChatML with a default system prompt (SmolLM2),
    /// Llama 3 headers with BOS, Qwen-style tools and namespaces, and feature probes.
    static let templates: [String] = [
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are helpful<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        """
        {{- bos_token }}
        {%- for message in messages %}
            {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
        {%- endfor %}
        {%- if add_generation_prompt %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
        {%- endif %}
        """,
        """
        {%- if tools %}
            {{- '<|im_start|>system\\n' }}
            {%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
            {{- "# Tools\\n<tools>" }}
            {%- for tool in tools %}
                {{- "\\n" }}{{- tool | tojson }}
            {%- endfor %}
            {{- "\\n</tools><|im_end|>\\n" }}
        {%- elif messages[0].role == 'system' %}
            {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
        {%- else %}
            {{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}
        {%- endif %}
        {%- set ns = namespace(last_user=-1) %}
        {%- for message in messages %}
            {%- if message.role == "user" %}{%- set ns.last_user = loop.index0 %}{%- endif %}
        {%- endfor %}
        {%- for message in messages %}
            {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
                {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
            {%- elif message.role == "assistant" %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
                {%- if loop.index0 > ns.last_user %}{{- '' }}{%- endif %}
                {{- '<|im_end|>\\n' }}
            {%- endif %}
        {%- endfor %}
        {%- if add_generation_prompt %}
            {{- '<|im_start|>assistant\\n' }}
        {%- endif %}
        """,
        """
        {% set sys = messages | selectattr('role', 'equalto', 'system') | list %}
        {% if sys | length > 0 %}[SYS {{ sys[0]['content'] | upper }}]
        {% endif %}
        {% for m in messages if m.role != 'system' %}
          {{ loop.index }}/{{ loop.length }} {{ m.role | capitalize }}: {{ m.content[:20] ~ ('…' if m.content | length > 20 else '') }}
        {% else %}none
        {% endfor %}
        {{ 'gen' if add_generation_prompt else 'no-gen' }} {{ (messages | length) * 2 }} {{ 7 // 2 }} {{ 7 % 3 }} {{ messages[-1].content.startswith('How') }}
        {% for i in range(3) %}{{ i }}{% if not loop.last %},{% endif %}{% endfor %}
        {# a comment #}{{ "x" if messages[0].missing is defined else "y" }} {{ messages[0].get('role') }} {{ {'a': 1, 'b': [1, 2]} | tojson }}
        """,
        "{% for message in messages %}{{ raise_exception('roles must alternate') if loop.index0 > 2 else '' }}{{ message.content }}{% endfor %}",
    ]

    static let conversations: [[[String: String]]] = [
        [["role": "user", "content": "Hello there"]],
        [
            ["role": "system", "content": "Be brief."],
            ["role": "user", "content": "How are you doing on this fine day?"],
            ["role": "assistant", "content": "<think>hm</think>\n\nFine, thanks."],
            ["role": "user", "content": "  Great!  "],
        ],
    ]

    @Test func renderingMatchesLlamaCppPython() async throws {
        var cases = [[String: Any]]()
        for template in Self.templates {
            for messages in Self.conversations {
                for generation in [true, false] {
                    cases.append([
                        "template": template, "messages": messages, "add_generation_prompt": generation, "bos": "<s>",
                        "eos": "</s>",
                    ])
                }
            }
        }
        let tools: [[String: Any]] = [
            [
                "type": "function",
                "function": [
                    "name": "get_weather",
                    "parameters": ["type": "object", "properties": ["city": ["type": "string"]]],
                ],
            ]
        ]
        cases.append([
            "template": Self.templates[2], "messages": Self.conversations[1], "add_generation_prompt": true,
            "extra": ["tools": tools],
        ])
        let dir = try TemporaryDirectory("render")
        let input = try JSONSerialization.data(withJSONObject: cases, options: [.sortedKeys])
        try input.write(to: dir.file("cases.json"))
        try await References.run(["render", dir.file("cases.json").path, dir.file("out.json").path])
        let reference = try jsonObject(dir.file("out.json")) as! [[String: Any]]
        #expect(
            reference.filter { $0["text"] != nil }.count == cases.count - 2, "all but the raise_exception cases render")
        // Read the cases back in JSONValue form (key order as written) for the renderer.
        guard case .array(let parsed) = try JSONValue.parse(input) else { Issue.record("cases"); return }
        for (c, ref) in zip(parsed, reference) {
            let template = try ChatTemplate(c["template"]!.string!)
            var extra = [String: JSONValue]()
            if let e = c["extra"], case .object(let pairs) = e { for (k, v) in pairs { extra[k] = v } }
            let result = Result {
                try template.render(
                    messages: c["messages"]!.array!, addGenerationPrompt: c["add_generation_prompt"]!.bool!,
                    bosToken: c["bos"]?.string ?? "", eosToken: c["eos"]?.string ?? "", extra: extra)
            }
            if let text = ref["text"] as? String {
                #expect((try? result.get()) == text, "template \(c["template"]!.string!.prefix(40).debugDescription)")
            } else {
                #expect(throws: InferenceError(.templateFailed, "")) { try result.get() }
            }
        }
    }

    @Test func unsupportedConstructsFailAtParseTime() {
        for source in [
            "{% raw %}x{% endraw %}", "{% for x in y recursive %}{% endfor %}", "{% set x %}block{% endset %}",
            "{{ x", "{% if x %}", "{% endfor %}", "{{ 'unterminated }}", "{% macro m( %}", "{{ a | }}",
        ] {
            #expect(throws: InferenceError(.templateFailed, ""), "\(source)") { try ChatTemplate(source) }
        }
    }

    @Test func runawayOutputIsStopped() async throws {
        try await onCPULane {
            let t = try ChatTemplate(
                "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'xxxxxxxxxxxxxxxx' }}{% endfor %}{% endfor %}"
            )
            #expect(throws: InferenceError(.templateFailed, "")) { try t.render(messages: []) }
        }
    }
}
